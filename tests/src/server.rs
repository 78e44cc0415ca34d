//! A small TCP server answering any request with `HTTP/1.0 200` and its name, counting
//! the connections it accepts. Bound in whatever namespace the creating thread is in.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

pub struct Server {
    pub name: String,
    accepted: Arc<AtomicU64>,
    /// The HTTP status it answers with (200 unless changed).
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` and serves until dropped.
    pub fn start(addr: SocketAddr, name: &str) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(AtomicU16::new(200));
        let thread = {
            let (accepted, status, stop) = (accepted.clone(), status.clone(), stop.clone());
            let name = name.to_string();
            std::thread::spawn(move || serve(listener, &name, &accepted, &status, &stop))
        };
        Ok(Server {
            name: name.to_string(),
            accepted,
            status,
            stop,
            thread: Some(thread),
        })
    }

    /// A listener that accepts and at once drops every connection: the cheapest peer
    /// for connect() loops, so the benchmark measures the connect, not the server.
    pub fn sink(addr: SocketAddr) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok(_) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => wait_readable(&listener),
                    }
                }
            })
        };
        Ok(Server {
            name: "sink".into(),
            accepted,
            status: Arc::new(AtomicU16::new(200)),
            stop,
            thread: Some(thread),
        })
    }

    /// From now on, answer with `status` (e.g. 503 for an unhealthy health check).
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Sleeps until a connection is pending, or 50 ms pass (to notice `stop`).
fn wait_readable(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, 50) };
}

fn serve(
    listener: TcpListener,
    name: &str,
    accepted: &AtomicU64,
    status: &AtomicU16,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                let (name, status) = (name.to_string(), status.load(Ordering::Relaxed));
                std::thread::spawn(move || answer(stream, &name, status));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_readable(&listener),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn answer(mut stream: TcpStream, name: &str, status: u16) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 1024];
    let mut seen = Vec::new();
    // Read the request head (or EOF from a connect-only client).
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let reason = if status == 200 { "OK" } else { "Not OK" };
    let reply = format!(
        "HTTP/1.0 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
        name.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
