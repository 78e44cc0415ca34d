//! The attached cgroup, watched: a service restart under systemd removes the
//! service's cgroup and makes a new one, which has none of our programs. Without a
//! watch, protection would silently disappear while the daemon still reports its
//! breakers. A periodic check of the path's identity (device and inode) is enough
//! to notice within a fraction of a second, and needs no inotify on cgroupfs.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::mpsc;

/// How often the cgroup's identity is checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Which cgroup a path names right now: its device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    /// The cgroup at `path`, or `None` when there is none.
    pub fn of(path: &Path) -> Option<Identity> {
        let meta = std::fs::metadata(path).ok()?;
        meta.is_dir().then(|| Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// What happened to the watched cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupChange {
    /// The path no longer names a cgroup.
    Gone,
    /// The path names a new cgroup: attach to it.
    Recreated(Identity),
}

/// Reports every change of the cgroup at `path`, starting from `attached`.
pub async fn watch(path: PathBuf, attached: Identity, changes: mpsc::Sender<CgroupChange>) {
    let mut last = Some(attached);
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Identity::of(&path);
        if now == last {
            continue;
        }
        let change = match now {
            None => CgroupChange::Gone,
            Some(id) => CgroupChange::Recreated(id),
        };
        if changes.send(change).await.is_err() {
            return;
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_a_directory_removed_and_made_again() {
        let dir = std::env::temp_dir().join(format!("breaker-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = Identity::of(&dir).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(watch(dir.clone(), first, tx));
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(rx.recv().await, Some(CgroupChange::Gone));
        std::fs::create_dir(&dir).unwrap();
        match rx.recv().await {
            Some(CgroupChange::Recreated(id)) => assert_eq!(Some(id), Identity::of(&dir)),
            other => panic!("expected Recreated, got {other:?}"),
        }
        task.abort();
        let _ = std::fs::remove_dir(&dir);
    }
}
