//! The daemon's Unix socket file: made where only its owner can connect from its first moment,
//! a stale one from an earlier run replaced, a live one or anything else left alone, and at the
//! end removed only if it is still the daemon's own.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use tokio::net::UnixListener;

use super::ServeError;

/// A listening Unix socket and the file it was bound to.
pub struct BoundSocket {
    pub listener: UnixListener,
    pub file: SocketFile,
}

impl BoundSocket {
    /// Listens at `path` with mode 0600. The mode comes from the process's umask, set for the
    /// bind alone: set afterwards, it would leave a moment in which another user could connect.
    /// The daemon binds its sockets before it starts anything that makes files.
    pub fn bind(path: &Path) -> Result<BoundSocket, ServeError> {
        clear_stale(path)?;
        let previous = rustix::process::umask(Mode::from_raw_mode(0o177));
        let bound = UnixListener::bind(path);
        rustix::process::umask(previous);
        let listener = bound.map_err(|source| ServeError::Listen {
            address: format!("unix:{}", path.display()),
            source,
        })?;
        let file = SocketFile::of(path).map_err(|source| ServeError::Listen {
            address: format!("unix:{}", path.display()),
            source,
        })?;
        Ok(BoundSocket { listener, file })
    }
}

/// A socket file the daemon made: its path, device and inode. Dropped, it removes the file
/// (see [`SocketFile::remove`]), so that every way out of the daemon, a failed start included,
/// leaves no socket behind; the listener must be dropped first.
pub struct SocketFile {
    path: PathBuf,
    file: (u64, u64),
}

impl SocketFile {
    fn of(path: &Path) -> std::io::Result<SocketFile> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_owned(),
            file: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file once the daemon no longer listens on it, unless something else has
    /// been put there since: a file of another inode, one that is not a socket, or a socket that
    /// takes connections (a new file may get the inode of the one it replaced).
    fn remove(&self) {
        let Ok(meta) = std::fs::symlink_metadata(&self.path) else {
            return;
        };
        let ours = meta.file_type().is_socket() && (meta.dev(), meta.ino()) == self.file;
        if ours && std::os::unix::net::UnixStream::connect(&self.path).is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes the socket a previous run left at `path`, if one is there and refuses connections.
/// Anything else stays: a file given by mistake, the socket of a running daemon, or a socket
/// whose state cannot be told (another kind of socket, one this user may not connect to).
fn clear_stale(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // nothing there
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_owned()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServeError::SocketInUse(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        // A full backlog (EAGAIN) is a daemon that listens, busy.
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            Err(ServeError::SocketInUse(path.to_owned()))
        }
        Err(e) => Err(ServeError::SocketUnknown {
            path: path.to_owned(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn the_socket_is_private_and_removed_only_while_it_is_the_daemons() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.sock");
        let first = BoundSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another daemon replaces the socket once this one stopped listening; it may well get
        // the same inode.
        let file = first.file;
        drop(first.listener);
        let second = BoundSocket::bind(&path).unwrap();
        drop(file);
        assert!(path.exists(), "the second daemon's socket stays");
        // Changing the socket's mode does not make it someone else's.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
        drop(second.listener);
        drop(second.file);
        assert!(!path.exists());
        // A socket of another inode put there since stays, though nothing listens on it: only
        // the inode tells it from the daemon's own.
        let third = BoundSocket::bind(&path).unwrap();
        drop(third.listener);
        // Made while the socket still holds its inode, so that it gets another.
        let keep = dir.path().join("keep");
        drop(std::os::unix::net::UnixListener::bind(&keep).unwrap());
        std::fs::rename(&keep, &path).unwrap();
        drop(third.file);
        assert!(path.exists(), "another socket stays");
        // So does a file that is not a socket, though it has the inode the daemon's socket had.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        drop(SocketFile::of(&path).unwrap());
        assert!(path.exists(), "a regular file stays");
    }

    #[tokio::test]
    async fn a_live_socket_of_another_kind_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let _datagrams = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let e = BoundSocket::bind(&path).err().unwrap().to_string();
        assert!(
            e.contains("cannot tell whether another process uses it"),
            "{e}"
        );
        assert!(path.exists());
    }
}
