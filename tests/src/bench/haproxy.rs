//! HAProxy as the userspace alternative: TCP mode in front of the same upstream,
//! passive health checking (`observe layer4`, `error-limit`, `on-error mark-down`)
//! plus active checks.
use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::lab::Lab;

/// Where the proxy listens, inside the client namespace.
pub const FRONTEND: &str = "127.0.0.1:18080";

pub fn available() -> bool {
    std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn config(upstream: &str, error_limit: u32, check_interval_ms: u64) -> String {
    format!(
        "global\n  maxconn 8192\n\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n  retries 0\n\n\
         frontend fe\n  bind {FRONTEND}\n  default_backend be\n\n\
         backend be\n  server api {upstream} check inter {check_interval_ms}ms fall 2 rise 1 observe layer4 error-limit {error_limit} on-error mark-down\n"
    )
}

/// HAProxy running in the lab's client namespace; killed on drop.
pub struct Haproxy {
    child: Child,
}

impl Haproxy {
    pub fn start(lab: &Lab, config_path: &Path) -> anyhow::Result<Haproxy> {
        let child = lab
            .client
            .command("haproxy")
            .args(["-db", "-f"])
            .arg(config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let proxy = Haproxy { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        let frontend: SocketAddr = FRONTEND.parse()?;
        while Instant::now() < deadline {
            let up = lab.client.within(move || {
                TcpStream::connect_timeout(&frontend, Duration::from_millis(100)).is_ok()
            })?;
            if up {
                return Ok(proxy);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("haproxy did not listen on {FRONTEND} within 10 s")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
