//! The control socket: a Unix socket, mode 0600, answering root only. Each
//! connection carries one request line and gets one response line. Requests go
//! to the daemon's main loop, which owns the running config.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot, Semaphore},
};

use super::protocol::{EventView, Request, Response};

/// A request and where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

/// Connections served at once; more wait for a turn.
const CONCURRENT: usize = 8;
/// A request line must arrive within this, and fit in `MAX_REQUEST` bytes.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path} is in use by another running daemon; give this one its own daemon.control_socket")]
    InUse { path: PathBuf },
}

/// Binds the socket at `path` (making its folder), root only.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        // Ours from a daemon that died, unless something still answers on it.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// `events --follow` connections at once; they hold no turn of their own.
const FOLLOWERS: usize = 16;

/// Serves the socket until the daemon ends; never returns an error (one
/// connection's trouble is that connection's).
pub async fn serve(
    listener: UnixListener,
    calls: mpsc::Sender<Call>,
    live: broadcast::Sender<EventView>,
) {
    let turns = Arc::new(Semaphore::new(CONCURRENT));
    let followers = Arc::new(Semaphore::new(FOLLOWERS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (calls, live, followers, turns) = (
            calls.clone(),
            live.clone(),
            followers.clone(),
            turns.clone(),
        );
        // The turn is waited for here, not in the accept loop: callers that never
        // read their answers can hold every turn, never the socket.
        tokio::spawn(async move {
            let Ok(turn) = turns.acquire_owned().await else {
                return;
            };
            let mut stream = stream;
            let request = match read_request(&mut stream).await {
                Ok(request) => request,
                Err(refusal) => {
                    write_line(&mut stream, &refusal).await;
                    return;
                }
            };
            if request == (Request::Events { follow: true }) {
                drop(turn);
                follow(stream, live, followers).await;
                return;
            }
            let answer = forward(request, &calls).await;
            write_line(&mut stream, &answer).await;
        });
    }
}

/// Writes one answer line; a caller that does not read it within
/// [`READ_TIMEOUT`] is given up on.
async fn write_line<T: serde::Serialize>(stream: &mut UnixStream, value: &T) -> bool {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    matches!(
        tokio::time::timeout(READ_TIMEOUT, stream.write_all(&line)).await,
        Ok(Ok(()))
    )
}

/// The caller's request, or the answer refusing it. The request is read before
/// the caller is checked, so a refused caller still reads its answer (rather than
/// finding the socket closed under its write).
async fn read_request(stream: &mut UnixStream) -> Result<Request, Response> {
    let mut line = String::new();
    let read = {
        use tokio::io::AsyncReadExt;
        let mut reader = BufReader::new((&mut *stream).take(MAX_REQUEST));
        tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await
    };
    // The socket is 0600 already; the peer's uid is checked too, in case its
    // folder or mode were changed.
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 => {}
        Ok(cred) => {
            return Err(Response::error(format!(
                "permission denied: the control socket answers root only (uid {})",
                cred.uid()
            )))
        }
        Err(e) => return Err(Response::error(format!("cannot tell who is asking: {e}"))),
    }
    match read {
        Err(_) => return Err(Response::error("no request within 5 s")),
        Ok(Err(e)) => return Err(Response::error(format!("reading the request: {e}"))),
        Ok(Ok(_)) => {}
    }
    serde_json::from_str(line.trim_end())
        .map_err(|e| Response::error(format!("malformed request: {e}")))
}

/// Hands `request` to the daemon's main loop and waits for its answer.
async fn forward(request: Request, calls: &mpsc::Sender<Call>) -> Response {
    let (reply, answer) = oneshot::channel();
    if calls.send((request, reply)).await.is_err() {
        return Response::error("the daemon is stopping");
    }
    answer
        .await
        .unwrap_or_else(|_| Response::error("the daemon dropped the request"))
}

/// `events --follow`: one answer line, then each transition as it happens,
/// until the caller hangs up. A caller too slow to keep up is told how many it
/// missed.
async fn follow(mut stream: UnixStream, live: broadcast::Sender<EventView>, slots: Arc<Semaphore>) {
    let Ok(_slot) = slots.try_acquire_owned() else {
        write_line(
            &mut stream,
            &Response::error(format!(
                "{FOLLOWERS} callers already follow events; try again later"
            )),
        )
        .await;
        return;
    };
    let mut events = live.subscribe();
    if !write_line(&mut stream, &Response::done("following transitions")).await {
        return;
    }
    let (mut reader, mut writer) = stream.into_split();
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            // The caller hung up (or sent something: it has no say here).
            _ = tokio::io::AsyncReadExt::read(&mut reader, &mut scratch) => return,
            event = events.recv() => {
                let line = match event {
                    Ok(event) => serde_json::to_vec(&event),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        serde_json::to_vec(&serde_json::json!({ "missed": n }))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let mut line = line.unwrap_or_default();
                line.push(b'\n');
                let written = tokio::time::timeout(READ_TIMEOUT, writer.write_all(&line)).await;
                if !matches!(written, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
}
