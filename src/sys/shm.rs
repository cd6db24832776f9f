//! The shared memory of the scoreboard: a `MAP_SHARED` mapping and the
//! [`Shared`] marker for the `#[repr(C)]` types of atomics placed in it.
//!
//! Knows nothing of the scoreboard's layout: the types that live in the
//! mapping implement [`Shared`] where they are defined.

use std::io;
use std::ptr::NonNull;

/// A shared memory mapping (the scoreboard), `MAP_SHARED`, read-write.
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl SharedMap {
    /// An anonymous shared mapping of `len` zeroed bytes, inherited by
    /// forked children.
    pub fn anonymous(len: usize) -> io::Result<SharedMap> {
        let nz = std::num::NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"))?;
        use nix::sys::mman::{MapFlags, ProtFlags};
        // SAFETY: a fresh anonymous mapping aliases no Rust object.
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .map_err(io::Error::from)?;
        Ok(SharedMap {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Maps `len` bytes of `file` shared; with `writable` false, read-only.
    ///
    /// # Errors
    ///
    /// Fails when `len` is zero, when the file is shorter than `len` (a
    /// mapping past the end of a file faults on access), or when mmap fails.
    pub fn file(file: &std::fs::File, len: usize, writable: bool) -> io::Result<SharedMap> {
        let nz = std::num::NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"))?;
        let size = file.metadata()?.len();
        if size < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file of {size} bytes is shorter than the mapping of {len}"),
            ));
        }
        use nix::sys::mman::{MapFlags, ProtFlags};
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: the file is at least `len` bytes long (checked above); the
        // mapping aliases no Rust object, and all access to it
        // goes through atomics.
        let ptr = unsafe { nix::sys::mman::mmap(None, nz, prot, MapFlags::MAP_SHARED, file, 0) }
            .map_err(io::Error::from)?;
        Ok(SharedMap {
            ptr: ptr.cast(),
            len,
        })
    }

    /// A private copy of the first `len` bytes of `file`, read with
    /// `pread` into an anonymous mapping: whatever the file's owner does
    /// to it meanwhile (truncate it, shrink it), reading the copy cannot
    /// fault. Fails when the file is shorter than `len`.
    pub fn copy_of(file: &std::fs::File, len: usize) -> io::Result<SharedMap> {
        let map = SharedMap::anonymous(len)?;
        // SAFETY: the mapping is ours alone until returned, `len` bytes
        // long, and no reference into it exists yet.
        let bytes = unsafe { std::slice::from_raw_parts_mut(map.ptr.as_ptr(), len) };
        std::os::unix::fs::FileExt::read_exact_at(file, bytes, 0)?;
        Ok(map)
    }

    /// Protects this file mapping (made writable with [`SharedMap::file`]
    /// from `fd`, which stays open for the life of the process) against
    /// the file being truncated under it: an access past the new end of
    /// the file raises SIGBUS, whose handler puts the file's length back
    /// (`ftruncate`; the lost pages read as zeroes) and lets the access go
    /// on; [`take_truncated`] then says it happened. A SIGBUS anywhere
    /// else keeps its default action. One such mapping per process;
    /// inherited by forks.
    pub fn guard_against_truncation(&self, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        use std::os::fd::AsRawFd;
        use std::sync::atomic::Ordering::Release;
        GUARD_ADDR.store(self.ptr.as_ptr() as usize, Release);
        GUARD_LEN.store(self.len, Release);
        GUARD_FD.store(fd.as_raw_fd(), Release);
        let act = SigAction::new(
            SigHandler::SigAction(on_sigbus),
            SaFlags::SA_SIGINFO | SaFlags::SA_NODEFER,
            SigSet::empty(),
        );
        // SAFETY: the handler reads atomics and calls ftruncate and signal,
        // which are async-signal-safe.
        unsafe { sigaction(Signal::SIGBUS, &act) }.map_err(io::Error::from)?;
        Ok(())
    }

    /// A reference to a `T` at byte `offset`. Panics when the offset is out
    /// of bounds or misaligned (a programming error).
    pub fn get<T: Shared>(&self, offset: usize) -> &T {
        assert!(
            offset + std::mem::size_of::<T>() <= self.len,
            "offset out of mapping"
        );
        assert_eq!(offset % std::mem::align_of::<T>(), 0, "misaligned offset");
        // SAFETY: bounds and alignment are checked above; `T: Shared`
        // promises any bit pattern is valid and all fields are atomics, so
        // concurrent writes by other processes are sound; the mapping lives
        // as long as `self`.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<T>() }
    }
}

/// Types that may live in memory shared with other processes.
///
/// # Safety
///
/// The type must be `#[repr(C)]` (or a primitive), valid for any bit
/// pattern (including all zeroes), and every byte of it that is written
/// after mapping must be written through an atomic. Implement it for a
/// struct only with [`shared_struct!`], which checks this.
pub unsafe trait Shared {}

// SAFETY: atomics of integers are valid for any bit pattern and are written
// only atomically.
unsafe impl Shared for std::sync::atomic::AtomicU8 {}
// SAFETY: as above.
unsafe impl Shared for std::sync::atomic::AtomicU32 {}
// SAFETY: as above.
unsafe impl Shared for std::sync::atomic::AtomicI32 {}
// SAFETY: as above.
unsafe impl Shared for std::sync::atomic::AtomicU64 {}
// SAFETY: an array of Shared elements has no bytes of its own.
unsafe impl<T: Shared, const N: usize> Shared for [T; N] {}

/// Declares a struct that may live in shared memory: it is made
/// `#[repr(C)]`, each field's type is checked at compile time to be
/// [`Shared`] (an atomic, an array of them, or another such struct), and
/// only then is [`Shared`] implemented for it. This is the one way to meet
/// the trait's contract, so that the argument is made once, here.
macro_rules! shared_struct {
    (
        $(#[$m:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fm:meta])* $f:ident : $t:ty ),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[repr(C)]
        $vis struct $name {
            $( $(#[$fm])* $f: $t ),*
        }

        // SAFETY: the struct is #[repr(C)] and every field's type is Shared
        // (asserted just below), so it is valid for any bit pattern and all
        // of its bytes are written through atomics.
        unsafe impl $crate::sys::shm::Shared for $name {}

        const _: () = {
            const fn assert_shared<T: $crate::sys::shm::Shared>() {}
            $( assert_shared::<$t>(); )*
        };
    };
}
pub(crate) use shared_struct;

static GUARD_ADDR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static GUARD_LEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static GUARD_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
static TRUNCATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the guarded mapping's file was truncated (and restored) since
/// the last call.
pub fn take_truncated() -> bool {
    TRUNCATED.swap(false, std::sync::atomic::Ordering::AcqRel)
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    use std::sync::atomic::Ordering::Acquire;
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (start, len, fd) = (
        GUARD_ADDR.load(Acquire),
        GUARD_LEN.load(Acquire),
        GUARD_FD.load(Acquire),
    );
    if fd >= 0 && addr >= start && addr < start + len {
        // SAFETY: ftruncate is async-signal-safe; fd is the mapping's file.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } == 0 {
            TRUNCATED.store(true, std::sync::atomic::Ordering::Release);
            return;
        }
    }
    // Not ours, or the length could not be restored: the default action,
    // taken when the faulting access runs again.
    // SAFETY: SIG_DFL runs no code in signal context.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping we created and nobody uses after drop.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
    }
}
