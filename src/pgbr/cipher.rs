//! pgBackRest's encryption: OpenSSL `enc`-compatible AES-256-CBC. A normal stream is `Salted__`,
//! an 8-byte salt, then the ciphertext; a raw one (bundles of block-incremental sets) omits the
//! magic. Key and IV come from EVP_BytesToKey(SHA-1, one round) over the passphrase text and the
//! salt; the plaintext is PKCS#7-padded, so a wrong passphrase shows as bad padding (or, one time in
//! a few hundred, as garbage).

use std::io::{self, Read};

use aes::Aes256;
use cbc::cipher::{Array, BlockModeDecrypt, KeyIvInit};
use sha1::{Digest, Sha1};

/// The magic of a normal (non-raw) stream.
pub const MAGIC: &[u8; 8] = b"Salted__";
const SALT_LEN: usize = 8;
const BLOCK: usize = 16;
/// Ciphertext bytes read from the inner reader at a time.
const READ_CHUNK: u64 = 256 * 1024;

type Decryptor = cbc::Decryptor<Aes256>;

/// A passphrase as pgBackRest uses it: its text's bytes (a generated sub-pass is the base64 text
/// itself, not its decoding). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct CipherPass(Vec<u8>);

impl CipherPass {
    /// Wraps the passphrase text.
    pub fn new(text: impl AsRef<[u8]>) -> CipherPass {
        CipherPass(text.as_ref().to_vec())
    }
}

impl std::fmt::Debug for CipherPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CipherPass(***)")
    }
}

/// EVP_BytesToKey(aes-256-cbc, SHA-1, salt, pass, count = 1): the 32-byte key and 16-byte IV.
pub fn bytes_to_key(pass: &[u8], salt: &[u8]) -> ([u8; 32], [u8; 16]) {
    let mut material = Vec::with_capacity(60);
    let mut previous: Vec<u8> = Vec::new();
    while material.len() < 48 {
        let mut hasher = Sha1::new();
        hasher.update(&previous);
        hasher.update(pass);
        hasher.update(salt);
        previous = hasher.finalize().to_vec();
        material.extend_from_slice(&previous);
    }
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    key.copy_from_slice(&material[..32]);
    iv.copy_from_slice(&material[32..48]);
    (key, iv)
}

/// Strips PKCS#7 padding from the last decrypted block.
pub fn unpad(block: &[u8]) -> Result<&[u8], &'static str> {
    let Some(&pad) = block.last() else { return Err("no ciphertext") };
    let pad = usize::from(pad);
    if pad == 0 || pad > BLOCK || pad > block.len() {
        return Err("bad PKCS#7 padding (wrong passphrase or damaged)");
    }
    let (data, padding) = block.split_at(block.len() - pad);
    if padding.iter().any(|&b| usize::from(b) != pad) {
        return Err("bad PKCS#7 padding (wrong passphrase or damaged)");
    }
    Ok(data)
}

/// Decrypts a whole stream in memory; `raw` when it has no `Salted__` magic.
pub fn decrypt(data: &[u8], pass: &CipherPass, raw: bool) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    DecryptReader::new(data, pass.clone(), raw).read_to_end(&mut out)?;
    Ok(out)
}

/// Encrypts as pgBackRest does (for tests and fuzzing seeds that build repositories).
pub(crate) fn encrypt(plain: &[u8], pass: &CipherPass, salt: [u8; 8], raw: bool) -> Vec<u8> {
    use cbc::cipher::BlockModeEncrypt;
    let (key, iv) = bytes_to_key(&pass.0, &salt);
    let pad = BLOCK - plain.len() % BLOCK;
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + pad, pad as u8);
    let (blocks, _) = Array::slice_as_chunks_mut(&mut buf);
    cbc::Encryptor::<Aes256>::new(&key.into(), &iv.into()).encrypt_blocks(blocks);
    let magic: &[u8] = if raw { b"" } else { MAGIC };
    [magic, &salt, &buf].concat()
}

/// Whether `data` starts like a normal encrypted stream.
pub fn is_encrypted(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
}

/// Decrypts a stream as it is read: whole blocks are decrypted as they arrive, the last one is
/// held back until the end to remove its padding.
pub struct DecryptReader<R> {
    inner: R,
    pass: CipherPass,
    raw: bool,
    decryptor: Option<Decryptor>,
    /// Ciphertext (or header) read but not yet decrypted.
    pending: Vec<u8>,
    /// Plaintext not yet returned, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    inner_done: bool,
    finished: bool,
}

impl<R: Read> DecryptReader<R> {
    /// Decrypts what `inner` yields with `pass`; `raw` when the stream has no magic.
    pub fn new(inner: R, pass: CipherPass, raw: bool) -> DecryptReader<R> {
        DecryptReader {
            inner,
            pass,
            raw,
            decryptor: None,
            pending: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            inner_done: false,
            finished: false,
        }
    }

    /// Reads more ciphertext and decrypts what can be; sets `finished` at the end.
    fn refill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.out_at = 0;
        while self.out.is_empty() && !self.finished {
            if !self.inner_done {
                // Appends without zero-filling; a short count means the inner reader ended.
                let n = (&mut self.inner).take(READ_CHUNK).read_to_end(&mut self.pending)?;
                self.inner_done = (n as u64) < READ_CHUNK;
            }
            if self.decryptor.is_none() && !self.start()? {
                continue;
            }
            self.decrypt_pending()?;
        }
        Ok(())
    }

    /// Takes the header off `pending` once it is there; `false` while it is incomplete.
    fn start(&mut self) -> io::Result<bool> {
        let header = if self.raw { SALT_LEN } else { MAGIC.len() + SALT_LEN };
        if self.pending.len() < header {
            return if self.inner_done { Err(invalid("truncated: no complete cipher header")) } else { Ok(false) };
        }
        if !self.raw && !self.pending.starts_with(MAGIC) {
            return Err(invalid("not encrypted (no Salted__ magic) or damaged"));
        }
        let salt = &self.pending[header - SALT_LEN..header];
        let (key, iv) = bytes_to_key(&self.pass.0, salt);
        self.decryptor = Some(Decryptor::new(&key.into(), &iv.into()));
        self.pending.drain(..header);
        Ok(true)
    }

    fn decrypt_pending(&mut self) -> io::Result<()> {
        let Some(decryptor) = self.decryptor.as_mut() else { return Ok(()) };
        let len = if self.inner_done {
            if self.pending.is_empty() || !self.pending.len().is_multiple_of(BLOCK) {
                return Err(invalid(format!(
                    "ciphertext of {} bytes is not a positive multiple of 16 (truncated or damaged)",
                    self.pending.len()
                )));
            }
            self.pending.len()
        } else {
            // Keep the last whole block back: it may be the padded one.
            self.pending.len().saturating_sub(BLOCK) / BLOCK * BLOCK
        };
        if len == 0 {
            return Ok(());
        }
        let (blocks, _) = Array::slice_as_chunks_mut(&mut self.pending[..len]);
        decryptor.decrypt_blocks(blocks);
        if self.inner_done {
            let plain = unpad(&self.pending[len - BLOCK..len]).map_err(invalid)?.len();
            self.out.extend_from_slice(&self.pending[..len - BLOCK + plain]);
            self.pending.clear();
            self.finished = true;
        } else {
            self.out.extend_from_slice(&self.pending[..len]);
            self.pending.drain(..len);
        }
        Ok(())
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.out_at == self.out.len() {
            if self.finished {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = buf.len().min(self.out.len() - self.out_at);
        buf[..n].copy_from_slice(&self.out[self.out_at..self.out_at + n]);
        self.out_at += n;
        Ok(n)
    }
}

fn invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(plain in proptest::collection::vec(any::<u8>(), 0..600), salt: [u8; 8], raw: bool) {
            let pass = CipherPass::new("pass");
            let data = encrypt(&plain, &pass, salt, raw);
            prop_assert_eq!(decrypt(&data, &pass, raw).unwrap(), plain);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100), raw: bool) {
            let mut data = if raw { Vec::new() } else { MAGIC.to_vec() };
            data.extend_from_slice(&bytes);
            // Wrong keys may pass the padding check by chance; what matters is no panic.
            let _ = decrypt(&data, &CipherPass::new("x"), raw);
        }
    }

    const SALT: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
    /// `printf 'hello pgbackrest' | openssl enc -aes-256-cbc -md sha1 -pass pass:x -S 0102030405060708`
    const HELLO: [u8; 32] = [
        0xc7, 0xd8, 0x5a, 0x0f, 0xc3, 0x7c, 0xdf, 0xa3, 0x11, 0xac, 0xbe, 0xac, 0x19, 0x7c, 0xbf, 0xbe, 0x24, 0xd7,
        0x55, 0x69, 0x4f, 0x44, 0x7a, 0x70, 0xa3, 0x05, 0x78, 0x52, 0xc6, 0xac, 0xed, 0xa2,
    ];
    /// The same with an empty input: one block of padding.
    const EMPTY: [u8; 16] =
        [0xd6, 0x8f, 0xef, 0x6a, 0xeb, 0x86, 0x33, 0xae, 0x3b, 0xf5, 0x60, 0x65, 0x71, 0x14, 0x07, 0xe8];

    fn salted(ciphertext: &[u8]) -> Vec<u8> {
        [&MAGIC[..], &SALT, ciphertext].concat()
    }

    #[test]
    fn bytes_to_key_matches_openssl() {
        // openssl enc -aes-256-cbc -md sha1 -pass pass:x -S 0102030405060708 -P
        let (key, iv) = bytes_to_key(b"x", &SALT);
        assert_eq!(to_hex(&key), "03f3925dfd39defa07eb13e3577b48e34e5cfadd3a437a16342b5b3291b827ae");
        assert_eq!(to_hex(&iv), "b89c52ecf7671333d72e9f972c46b837");
    }

    fn to_hex(bytes: &[u8]) -> String {
        crate::repo::crypto::to_hex(bytes)
    }

    #[test]
    fn decrypts_openssl_output_normal_and_raw() {
        let pass = CipherPass::new("x");
        assert_eq!(decrypt(&salted(&HELLO), &pass, false).unwrap(), b"hello pgbackrest");
        assert_eq!(decrypt(&[&SALT[..], &HELLO].concat(), &pass, true).unwrap(), b"hello pgbackrest");
        assert_eq!(decrypt(&salted(&EMPTY), &pass, false).unwrap(), b"");
        assert_eq!(encrypt(b"hello pgbackrest", &pass, SALT, false), salted(&HELLO));
        // Read one byte at a time through the streaming reader.
        let data = salted(&HELLO);
        let mut reader = DecryptReader::new(OneByte(&data[..]), pass, false);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello pgbackrest");
    }

    struct OneByte<'a>(&'a [u8]);
    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }

    #[test]
    fn wrong_pass_truncation_and_padding_are_errors() {
        let err = decrypt(&salted(&HELLO), &CipherPass::new("y"), false).unwrap_err();
        assert!(err.to_string().contains("wrong passphrase or damaged"), "{err}");
        let pass = CipherPass::new("x");
        assert!(decrypt(&salted(&HELLO[..31]), &pass, false).is_err());
        assert!(decrypt(&salted(&[]), &pass, false).is_err());
        assert!(decrypt(&HELLO, &pass, false).unwrap_err().to_string().contains("Salted__"));
        assert!(decrypt(b"Salted", &pass, false).is_err());
    }

    #[test]
    fn pkcs7_rules() {
        assert_eq!(unpad(&[b'a', 1]).unwrap(), b"a");
        assert_eq!(unpad(&[16; 16]).unwrap(), b"");
        assert!(unpad(&[]).is_err());
        assert!(unpad(&[b'a', 0]).is_err());
        assert!(unpad(&[17; 16]).is_err());
        assert_eq!(unpad(&[b'a', 3, 3, 3]).unwrap(), b"a");
        assert!(unpad(&[b'a', 2, 4, 3, 3]).is_err());
        assert!(unpad(&[3, 3]).is_err());
    }
}
