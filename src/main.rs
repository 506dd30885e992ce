/// Every Rust allocation through mimalloc, unless the `tcmalloc` feature puts tcmalloc under
/// the whole process. glibc's malloc returns every tensor over its mmap threshold to the
/// system and zero-fills it afresh on the next step; ndarray allocates a tensor per op, so
/// training spent a large share of its time there (docs/benchmarks.md has the figures).
#[cfg(not(feature = "tcmalloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    restore_sigpipe();
    #[cfg(feature = "distributed")]
    let mpi = match kiln::distributed::Session::from_launcher() {
        Ok(session) => session,
        Err(error) => {
            eprintln!("error: {error:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match kiln::cli::run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            // The other processes of an MPI job would wait for this one in their next
            // collective: end them all.
            #[cfg(feature = "distributed")]
            if let Some(mpi) = mpi.filter(|_| kiln::distributed::Processes::current().size > 1) {
                mpi.abort(1);
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so `kiln inspect … | head` would panic on a closed pipe; like other
/// command-line tools, kiln should just stop.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; sets the default action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
