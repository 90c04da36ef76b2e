//! The passphrase of an encrypted export and its decryption. Exports are encrypted in the age
//! format (age-encryption.org/v1) with a passphrase recipient: scrypt derives the key that wraps
//! the file key, and the content is sealed in 64 KiB ChaCha20-Poly1305 chunks, so a flipped bit or
//! a truncated file is an error, never altered data. `age -d` decrypts it, asking for the
//! passphrase on the terminal; `pgfork export --decrypt` does the same without a terminal.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use age::secrecy::SecretString;

use crate::error::{Error, IoContext, Result};
use crate::util::fsx;

/// The environment variable holding an export's passphrase (unless a file is named).
pub const PASSPHRASE_ENV: &str = "PGFORK_EXPORT_PASSPHRASE";

/// The passphrase from `file` (which other users must not be able to read; a trailing newline is
/// not part of it) or from [`PASSPHRASE_ENV`]. Never from the command line: arguments are visible
/// to every user in the process list.
pub fn passphrase(file: Option<&Path>) -> Result<SecretString> {
    let text = match file {
        Some(file) => {
            let meta = std::fs::metadata(file).map_err(|e| {
                Error::refused(
                    format!("cannot read the passphrase file {}: {e}", file.display()),
                    Some("name a file holding the passphrase (mode 0600), not the passphrase itself".into()),
                )
            })?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(Error::refused(
                    format!("{} is readable by other users", file.display()),
                    Some(format!("chmod 600 {}", file.display())),
                ));
            }
            let text = std::fs::read_to_string(file).at("read", file)?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        None => std::env::var(PASSPHRASE_ENV).unwrap_or_default(),
    };
    if text.is_empty() {
        return Err(Error::refused(
            "an encrypted export needs a passphrase, and none is set",
            Some(format!("set {PASSPHRASE_ENV}, or name a file holding it (mode 0600)")),
        ));
    }
    Ok(SecretString::from(text))
}

/// Where decrypted bytes go.
pub enum Plaintext<'a> {
    /// A file, written atomically (temp, fsync, rename).
    File(&'a Path),
    /// Standard output, for a pipe into `lz4 -d | tar -x`.
    Stdout,
}

/// Decrypts the export `input` with `passphrase` into `output`; returns the bytes written. A
/// wrong passphrase, a file that is not a passphrase-encrypted age file, or damage is an error
/// naming `input`; nothing is left under the output name then (on standard output, the bytes
/// before the damage were already written, and the error says so).
pub fn decrypt(input: &Path, output: Plaintext<'_>, passphrase: &SecretString) -> Result<u64> {
    let file = std::fs::File::open(input).at("open", input)?;
    let mut reader = decrypting(BufReader::new(file), input, passphrase)?;
    match output {
        Plaintext::File(path) => {
            let tmp = fsx::temp_name(path);
            let result = (|| {
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .at("create", &tmp)?;
                let copied = copy(&mut reader, &mut out, input)?;
                out.sync_all().at("fsync", &tmp)?;
                std::fs::rename(&tmp, path).at("rename into place", path)?;
                fsx::fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
                Ok(copied)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        }
        Plaintext::Stdout => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let copied = copy(&mut reader, &mut out, input)?;
            out.flush().at("write", "standard output")?;
            Ok(copied)
        }
    }
}

/// The first bytes of every age file in its binary form (exports are never armored).
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/";

/// The plaintext of the age file `reader` (read from `input`) under `passphrase`: refused when it
/// is not a passphrase-encrypted age file or the passphrase is wrong; the reader fails where
/// the file is damaged or truncated.
pub fn decrypting<R: BufRead>(
    reader: R,
    input: &Path,
    passphrase: &SecretString,
) -> Result<age::stream::StreamReader<R>> {
    let decryptor = age::Decryptor::new_buffered(reader).map_err(|e| not_age(input, &e))?;
    if !decryptor.is_scrypt() {
        return Err(Error::refused(
            format!("{} is encrypted to age keys, not with a passphrase", input.display()),
            Some("decrypt it with age -d -i KEYFILE".into()),
        ));
    }
    let identity = age::scrypt::Identity::new(passphrase.clone());
    decryptor.decrypt(std::iter::once(&identity as &dyn age::Identity)).map_err(|e| match e {
        age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => Error::refused(
            format!("wrong passphrase for {}", input.display()),
            Some(format!("set {PASSPHRASE_ENV} (or name the file holding it) to the passphrase it was exported with")),
        ),
        other => not_age(input, &other),
    })
}

fn copy(reader: &mut impl Read, out: &mut impl Write, input: &Path) -> Result<u64> {
    let mut buf = vec![0u8; 1024 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::invalid(
                    input.display().to_string(),
                    format!("damaged after {total} bytes of plaintext, nothing from there on is trusted ({e})"),
                ));
            }
        };
        out.write_all(&buf[..n]).at("write", "decrypted output")?;
        total += n as u64;
    }
}

fn not_age(input: &Path, error: &age::DecryptError) -> Error {
    Error::invalid(input.display().to_string(), format!("not a readable age file ({error})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(plain: &[u8], pass: &str) -> Vec<u8> {
        let mut recipient = age::scrypt::Recipient::new(SecretString::from(pass.to_string()));
        recipient.set_work_factor(10);
        let encryptor = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let mut writer = encryptor.wrap_output(&mut out).unwrap();
        writer.write_all(plain).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn decrypts_with_the_passphrase_and_refuses_a_wrong_one_or_damage() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("x.tar.lz4.age");
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut sealed = seal(&plain, "right");
        std::fs::write(&input, &sealed).unwrap();
        let out = dir.path().join("x.tar.lz4");
        let pass = |p: &str| SecretString::from(p.to_string());
        assert_eq!(decrypt(&input, Plaintext::File(&out), &pass("right")).unwrap(), plain.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), plain);
        std::fs::remove_file(&out).unwrap();

        let err = decrypt(&input, Plaintext::File(&out), &pass("wrong")).unwrap_err();
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
        let last = sealed.len() - 100;
        sealed[last] ^= 1;
        std::fs::write(&input, &sealed).unwrap();
        let err = decrypt(&input, Plaintext::File(&out), &pass("right")).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(!out.exists(), "nothing left under the output name");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left");
        std::fs::write(&input, b"not age at all").unwrap();
        assert!(decrypt(&input, Plaintext::File(&out), &pass("right")).is_err());
    }

    #[test]
    fn passphrase_files_must_be_private_and_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        std::fs::write(&file, "secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(passphrase(Some(&file)).is_err());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        use age::secrecy::ExposeSecret;
        assert_eq!(passphrase(Some(&file)).unwrap().expose_secret(), "secret");
        std::fs::write(&file, "\n").unwrap();
        assert!(passphrase(Some(&file)).is_err());
        assert!(passphrase(Some(&dir.path().join("missing"))).is_err());
    }
}
