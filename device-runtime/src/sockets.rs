//! The containers' own sockets. The management socket is never mounted into a container:
//! each container gets a socket of its own, and a connection is identified by the socket
//! it came in on, which the kernel fixes at `connect()`. Nothing about the caller is read
//! from `/proc`, so an exited child, a reused pid or a changed cgroup cannot change who a
//! connection is.
//!
//! A socket stays bound for the runtime's life (a container restarted from its bundle
//! finds the same inode at its mount point); the directory is emptied at start, when every
//! stale container is removed too. Whether a socket's connections act as the manager is
//! not kept here: the server reads it from the running revision's container of that name,
//! so it follows what runs, not what was last prepared.

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::mpsc;

/// A new container socket for the server to accept on.
pub type NewListener = (String, UnixListener);

pub struct ContainerSockets {
    dir: PathBuf,
    /// Names whose socket is bound.
    bound: Mutex<HashSet<String>>,
    tx: mpsc::UnboundedSender<NewListener>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<NewListener>>>,
}

impl ContainerSockets {
    /// Sockets live in `dir` (created 0700: only root reaches them from the host).
    pub fn new(dir: PathBuf) -> ContainerSockets {
        let (tx, rx) = mpsc::unbounded_channel();
        ContainerSockets {
            dir,
            bound: Mutex::new(HashSet::new()),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Removes sockets a previous run left (their containers were removed with them).
    pub fn clear(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// The socket of container `name`, bound now if it is not yet.
    pub fn ensure(&self, name: &str) -> std::io::Result<PathBuf> {
        let path = self.path(name);
        let mut bound = self.bound.lock().map_err(|_| poisoned())?;
        if bound.contains(name) {
            return Ok(path);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let listener = bind(&path)?;
        self.tx
            .send((name.to_owned(), listener))
            .map_err(|_| std::io::Error::other("the control socket server has stopped"))?;
        bound.insert(name.to_owned());
        Ok(path)
    }

    /// The stream of sockets to accept on; the one server takes it once.
    pub fn take_listeners(&self) -> Option<mpsc::UnboundedReceiver<NewListener>> {
        self.rx.lock().ok().and_then(|mut r| r.take())
    }
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    // Any uid inside the container may talk to its own socket; the host side is guarded
    // by the 0700 directory.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

fn poisoned() -> std::io::Error {
    std::io::Error::other("container socket table poisoned")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_bound_once_in_a_directory_only_root_reaches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = ContainerSockets::new(dir.path().join("sockets"));
        let mut rx = s.take_listeners().expect("listeners");
        let p = s.ensure("web").expect("bind");
        assert!(p.exists());
        assert_eq!(s.ensure("web").expect("again"), p);
        let (name, _) = rx.try_recv().expect("one listener");
        assert_eq!(name, "web");
        assert!(rx.try_recv().is_err(), "bound twice");
        let mode = std::fs::metadata(dir.path().join("sockets"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(s.take_listeners().is_none());
    }
}
