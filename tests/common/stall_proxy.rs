//! A TCP proxy on loopback in front of a server, which can stall connections the way a stuck
//! connection does: it forwards every request, then stops forwarding the responses of a connection
//! once `after` bytes of them have passed, without closing it (until the client closes its side).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Which connections stall.
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// Responses forwarded on a connection before it stalls (`u64::MAX`: never).
    after: u64,
    /// How many more connections may stall.
    left: u32,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    policy: Mutex<Policy>,
    accepted: AtomicU32,
    stalled: AtomicU32,
    stop: AtomicBool,
}

/// The proxy; stops (closing every connection) on drop.
pub struct StallProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl StallProxy {
    /// A proxy to the server at `upstream` (`http://127.0.0.1:port` or `127.0.0.1:port`),
    /// forwarding everything until told to stall.
    pub fn start(upstream: &str) -> StallProxy {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            upstream,
            policy: Mutex::new(Policy { after: u64::MAX, left: 0 }),
            accepted: AtomicU32::new(0),
            stalled: AtomicU32::new(0),
            stop: AtomicBool::new(false),
        });
        let addr = listener.local_addr().unwrap();
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            client.set_nonblocking(false).unwrap();
                            shared.accepted.fetch_add(1, Ordering::Relaxed);
                            let shared = Arc::clone(&shared);
                            std::thread::spawn(move || serve(&shared, client));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        StallProxy { addr, shared, acceptor: Some(acceptor) }
    }

    /// The endpoint URL of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, the next `count` connections (`u32::MAX`: all) whose responses pass `after`
    /// bytes stall there.
    pub fn stall(&self, after: u64, count: u32) {
        *self.shared.policy.lock().unwrap() = Policy { after, left: count };
    }

    /// From now on, nothing stalls (connections stalled already stay so).
    pub fn pass(&self) {
        self.stall(u64::MAX, 0);
    }

    /// Connections stalled so far.
    pub fn stalled(&self) -> u32 {
        self.shared.stalled.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// One connection: requests forwarded as they come, responses until the policy stalls them.
fn serve(shared: &Shared, client: TcpStream) {
    let Ok(server) = TcpStream::connect(shared.upstream) else { return };
    let client_gone = Arc::new(AtomicBool::new(false));
    let requests = {
        let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let gone = Arc::clone(&client_gone);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            gone.store(true, Ordering::Relaxed);
            let _ = to.shutdown(Shutdown::Write);
        })
    };
    let (mut from, mut to) = (server, client);
    let mut passed = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    let mut stalled = false;
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        let after = shared.policy.lock().unwrap().after;
        let mut forward = n as u64;
        if passed + forward > after && take_stall(shared) {
            forward = after.saturating_sub(passed);
            stalled = true;
        }
        if to.write_all(&buf[..forward as usize]).is_err() {
            break;
        }
        passed += forward;
        if stalled {
            // Held open, silent, until the client gives up on it (or the proxy stops).
            while !client_gone.load(Ordering::Relaxed) && !shared.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
    let _ = requests.join();
}

/// Whether the policy lets one more connection stall (and counts it).
fn take_stall(shared: &Shared) -> bool {
    let mut policy = shared.policy.lock().unwrap();
    if policy.left == 0 {
        return false;
    }
    if policy.left != u32::MAX {
        policy.left -= 1;
    }
    shared.stalled.fetch_add(1, Ordering::Relaxed);
    true
}
