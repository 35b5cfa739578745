//! The daemon's Unix socket file: made where only its owner can connect from its first moment,
//! a stale one from an earlier run replaced, a live one or anything else left alone, and at the
//! end removed only if it is still the daemon's own.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use super::ServeError;

/// A listening Unix socket and the file it was bound to.
pub struct BoundSocket {
    pub listener: UnixListener,
    path: PathBuf,
    /// The socket file's identity, to tell it from one another daemon made later.
    file: FileId,
}

impl BoundSocket {
    /// Listens at `path` with mode 0600. The socket is bound inside a new directory of mode
    /// 0700 next to `path`, made private there, and only then moved to `path`: bound at `path`
    /// directly, it would take the process's umask until its mode is set, and another user
    /// could connect in between.
    pub fn bind(path: &Path) -> Result<BoundSocket, ServeError> {
        let failed = |source| ServeError::Listen {
            address: format!("unix:{}", path.display()),
            source,
        };
        clear_stale(path)?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let private = parent.join(format!(".buildstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private); // left by a killed run with our pid
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(failed)?;
        let bound = (|| {
            let inner = private.join("s");
            let listener = UnixListener::bind(&inner)?;
            std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&inner, path)?;
            Ok(listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        let listener = bound.map_err(failed)?;
        let meta = std::fs::symlink_metadata(path).map_err(failed)?;
        Ok(BoundSocket {
            listener,
            path: path.to_owned(),
            file: FileId::of(&meta),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path and identity of the socket file, to remove it once the daemon is done.
    pub fn file(&self) -> SocketFile {
        SocketFile {
            path: self.path.clone(),
            file: self.file,
        }
    }
}

/// Device, inode and change time: a file made after another was removed may get its inode.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64, i64, i64);

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId(meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
    }
}

/// A socket file the daemon made.
pub struct SocketFile {
    path: PathBuf,
    file: FileId,
}

impl SocketFile {
    /// Removes the file, unless another daemon has put its own socket there since.
    pub fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if FileId::of(&meta) == self.file {
                let _ = std::fs::remove_file(&self.path);
            }
        }
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

    #[tokio::test]
    async fn the_socket_is_private_and_removed_only_while_it_is_the_daemons() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.sock");
        let first = BoundSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no private directory left behind"
        );
        // Another daemon replaces the socket once this one stopped listening.
        let file = first.file();
        drop(first);
        let second = BoundSocket::bind(&path).unwrap();
        file.remove();
        assert!(path.exists(), "the second daemon's socket stays");
        second.file().remove();
        assert!(!path.exists());
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
