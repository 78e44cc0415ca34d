//! The CLI side of the control socket.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::protocol::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no breaker daemon is running (nothing answers at {0})")]
    NoDaemon(String),
    #[error("the control socket {0} is root only: permission denied")]
    Denied(String),
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon's answer is not understood: {0}")]
    BadAnswer(String),
    #[error("{0}")]
    Refused(String),
}

/// Sends `request` to the daemon at `socket` and returns its answer. A reload
/// verifies programs, so answers may take seconds.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    call_within(socket, request, Duration::from_secs(60))
}

/// [`call`], giving up on an answer after `timeout` (a live view must not freeze
/// behind a daemon busy with a reload).
pub fn call_within(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let shown = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NoDaemon(shown.clone())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Denied(shown.clone()),
        _ => ClientError::Io {
            path: shown.clone(),
            source: e,
        },
    })?;
    let io = |source| ClientError::Io {
        path: shown.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line =
        serde_json::to_vec(request).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(answer.trim_end())
        .map_err(|e| ClientError::BadAnswer(format!("{e}: {answer:?}")))
}

/// `events --follow`: after the daemon's first answer, calls `each` with every
/// line it sends, until it hangs up (or `each` returns false).
pub fn follow(socket: &Path, mut each: impl FnMut(&str) -> bool) -> Result<(), ClientError> {
    let shown = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NoDaemon(shown.clone())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Denied(shown.clone()),
        _ => ClientError::Io {
            path: shown.clone(),
            source: e,
        },
    })?;
    let io = |source| ClientError::Io {
        path: shown.clone(),
        source,
    };
    let mut line = serde_json::to_vec(&Request::Events { follow: true })
        .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut lines = BufReader::new(stream).lines();
    let first = lines.next().transpose().map_err(io)?.unwrap_or_default();
    let answer: Response = serde_json::from_str(&first)
        .map_err(|e| ClientError::BadAnswer(format!("{e}: {first:?}")))?;
    if !answer.ok {
        return Err(ClientError::Refused(answer.error.unwrap_or_default()));
    }
    for line in lines {
        if !each(&line.map_err(io)?) {
            break;
        }
    }
    Ok(())
}
