//! Giving freed heap memory back to the operating system after a load.
//!
//! Loading a zone builds many short-lived tables (parsed records, grouping maps, digests)
//! between the allocations that stay. glibc returns freed memory only from the top of its
//! heap, so without help the server keeps its loading peak resident for as long as it runs:
//! at 100,000 members, 137 MiB resident against 56 MiB after `malloc_trim(0)` (measured with
//! `gdb -ex 'call malloc_trim(0)'` on a running server). That is the measured need for the one
//! `unsafe` call of the crate.

/// Returns the heap's free pages to the kernel (glibc's `malloc_trim`); a no-op elsewhere.
/// It walks and locks every malloc arena, so call it after a load, off the request path.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_freed_memory() {
    // SAFETY: malloc_trim takes a plain integer and has no preconditions; it only changes
    // which free pages stay mapped, never any live allocation.
    let released = unsafe { libc::malloc_trim(0) } != 0;
    tracing::debug!(released, "returned freed heap memory to the kernel");
}

/// Other allocators (musl, jemalloc, the macOS one) need no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed_memory() {}
