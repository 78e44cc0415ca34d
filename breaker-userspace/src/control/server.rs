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
    sync::{mpsc, oneshot, Semaphore},
};

use super::protocol::{Request, Response};

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

/// Serves the socket until the daemon ends; never returns an error (one
/// connection's trouble is that connection's).
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    let turns = Arc::new(Semaphore::new(CONCURRENT));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(turn) = turns.clone().acquire_owned().await else {
            return;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let _turn = turn;
            let mut stream = stream;
            let answer = answer(&mut stream, &calls).await;
            let mut line = serde_json::to_vec(&answer).unwrap_or_default();
            line.push(b'\n');
            let _ = stream.write_all(&line).await;
        });
    }
}

async fn answer(stream: &mut UnixStream, calls: &mpsc::Sender<Call>) -> Response {
    // The socket is 0600 already; the peer's uid is checked too, in case its
    // folder or mode were changed.
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 => {}
        Ok(cred) => {
            return Response::error(format!(
                "permission denied: the control socket answers root only (uid {})",
                cred.uid()
            ))
        }
        Err(e) => return Response::error(format!("cannot tell who is asking: {e}")),
    }
    let mut line = String::new();
    let read = {
        use tokio::io::AsyncReadExt;
        let mut reader = BufReader::new(stream.take(MAX_REQUEST));
        tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await
    };
    match read {
        Err(_) => return Response::error("no request within 5 s"),
        Ok(Err(e)) => return Response::error(format!("reading the request: {e}")),
        Ok(Ok(_)) => {}
    }
    let request: Request = match serde_json::from_str(line.trim_end()) {
        Ok(r) => r,
        Err(e) => return Response::error(format!("malformed request: {e}")),
    };
    let (reply, answer) = oneshot::channel();
    if calls.send((request, reply)).await.is_err() {
        return Response::error("the daemon is stopping");
    }
    answer
        .await
        .unwrap_or_else(|_| Response::error("the daemon dropped the request"))
}
