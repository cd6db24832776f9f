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
    pub fn file(file: &std::fs::File, len: usize, writable: bool) -> io::Result<SharedMap> {
        let nz = std::num::NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"))?;
        use nix::sys::mman::{MapFlags, ProtFlags};
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: the file is at least `len` bytes long (checked by the
        // caller); the mapping aliases no Rust object, and all access to it
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
/// The type must be `#[repr(C)]`, valid for any bit pattern (including all
/// zeroes), and every field written after mapping must be an atomic.
pub unsafe trait Shared {}

// SAFETY: Header is #[repr(C)] and made only of atomics.
unsafe impl Shared for crate::scoreboard::Header {}
// SAFETY: Slot is #[repr(C)] and made only of atomics.
unsafe impl Shared for crate::scoreboard::Slot {}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping we created and nobody uses after drop.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
    }
}
