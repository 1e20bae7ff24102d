//! The allocator's side of the memory target (every process under 20 MiB
//! and flat over a soak). glibc gives each thread that allocates its own
//! arena, and a worker has several: the runtime's, and one per SQLite
//! connection (sqlx runs each on a thread of its own). Freed memory stays
//! in the arena it came from, so each arena holds its own high-water mark:
//! one arena for the whole process shares that slack (a 50,000-order soak:
//! tracker 23.1 -> 21.7 MiB, payment 21.4 -> 20.2, shipping 19.9 -> 17.6,
//! throughput the same). A process whose working set comes and goes (the
//! tracker's warehouse move) also hands freed pages back once it is done.
//! Elsewhere (musl, macOS) both are no-ops. The only unsafe code of the
//! workspace: two calls into glibc, each with its reason.

#![allow(unsafe_code)]

/// One malloc arena for the process; called first thing in `main`, before
/// any thread starts.
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of glibc's allocator; it is
    // called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the freed pages at the top and in the middle of the heap to
/// the system (glibc's `malloc_trim`), after a burst of work.
pub fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
