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

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping we created and nobody uses after drop.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
    }
}
