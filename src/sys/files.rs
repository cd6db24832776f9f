//! Opening the files jobd writes (its logs, the scoreboard, the pid file)
//! so that nobody else can choose them: a symbolic link at the path is
//! never followed (`O_NOFOLLOW`), a FIFO never blocks the open
//! (`O_NONBLOCK`, cleared once the file is known to be regular), and what
//! is opened must be a regular file with one link, owned by jobd's
//! effective user and not writable by others. A file that does not exist
//! is created with the caller's mode.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why a path was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The path is a symbolic link.
    #[error("is a symbolic link; refusing to follow it")]
    Symlink,
    /// A FIFO, a device, a socket or a directory.
    #[error("is not a regular file ({0})")]
    NotRegular(&'static str),
    /// Another user's file.
    #[error("is owned by uid {owner}, not by jobd's uid {me}; refusing to write it")]
    Owner {
        /// The file's owner.
        owner: u32,
        /// jobd's effective uid.
        me: u32,
    },
    /// Everyone may write it.
    #[error("is writable by every user (mode {0:04o}); refusing to use it")]
    WorldWritable(u32),
    /// A hard link to a file elsewhere.
    #[error("has {0} hard links; refusing to write a file linked elsewhere")]
    Links(u64),
    /// The open or fstat failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Refused {
    /// The underlying I/O error, when the system refused rather than jobd.
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            Refused::Io(e) => Some(e),
            _ => None,
        }
    }
}

fn kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// How to open.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// Mode of a file that is created.
    pub mode: u32,
    /// `O_APPEND` (logs) instead of read-write (scoreboard, pid file).
    pub append: bool,
    /// Create it when missing.
    pub create: bool,
}

/// Opens `path` for writing as described in the module documentation.
pub fn open_own(path: &Path, want: Want) -> Result<File, Refused> {
    let mut o = OpenOptions::new();
    if want.append {
        o.append(true);
    } else {
        o.read(true).write(true);
    }
    o.create(want.create)
        .mode(want.mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY);
    let file = o.open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => Refused::Symlink,
        // A FIFO without a reader, opened write-only and non-blocking.
        Some(libc::ENXIO) => Refused::NotRegular("a FIFO"),
        _ => Refused::Io(e),
    })?;
    check(&file)?;
    // Regular: blocking or not makes no difference to reads and writes,
    // but the descriptor is handed on (fd 2 to handlers): clear it.
    let flags =
        nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(io::Error::from)?;
    Ok(file)
}

/// The checks on an open file.
fn check(file: &File) -> Result<(), Refused> {
    let m = file.metadata()?;
    if !m.file_type().is_file() {
        return Err(Refused::NotRegular(kind(m.file_type())));
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me {
        return Err(Refused::Owner { owner: m.uid(), me });
    }
    if m.mode() & 0o002 != 0 {
        return Err(Refused::WorldWritable(m.mode() & 0o7777));
    }
    if m.nlink() > 1 {
        return Err(Refused::Links(m.nlink()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: Want = Want {
        mode: 0o640,
        append: true,
        create: true,
    };

    #[test]
    fn creates_with_the_mode_and_reopens_its_own_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        drop(open_own(&p, LOG).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        let f = open_own(&p, LOG).unwrap();
        let fl = nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(fl & libc::O_NONBLOCK, 0, "O_NONBLOCK is cleared");
    }

    #[test]
    fn refuses_symlinks_fifos_devices_links_and_world_writable_files() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, "precious\n").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(open_own(&link, LOG), Err(Refused::Symlink)));
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            open_own(&fifo, LOG),
            Err(Refused::NotRegular("a FIFO"))
        ));
        let rw = Want {
            append: false,
            ..LOG
        };
        assert!(matches!(
            open_own(&fifo, rw),
            Err(Refused::NotRegular("a FIFO"))
        ));
        assert!(matches!(
            open_own(Path::new("/dev/null"), LOG),
            Err(Refused::NotRegular(_) | Refused::Owner { .. })
        ));
        let hard = d.path().join("hard");
        std::fs::hard_link(&target, &hard).unwrap();
        assert!(matches!(open_own(&hard, LOG), Err(Refused::Links(2))));
        let ww = d.path().join("ww");
        std::fs::write(&ww, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ww, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            open_own(&ww, LOG),
            Err(Refused::WorldWritable(0o666))
        ));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    }

    #[test]
    fn refuses_another_users_file() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("theirs");
        std::fs::write(&p, "").unwrap();
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        assert!(matches!(
            open_own(&p, LOG),
            Err(Refused::Owner {
                owner: 65534,
                me: 0
            })
        ));
    }
}
