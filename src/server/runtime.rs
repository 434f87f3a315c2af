//! The tokio runtime the proxy runs on, as `--threads N` asks (the binary and the
//! throughput bench build it the same way).

/// Stack of the threads that parse SQL: the Postgres grammar (in C) recurses deeply on
/// nested statements.
pub const PARSER_STACK: usize = 16 * 1024 * 1024;

/// A runtime with `threads` workers (0 = one per CPU). With 1, a current-thread runtime:
/// it has no work-stealing bookkeeping (the multi-thread scheduler times every batch of
/// polls and tunes its queue interval with `powf`, ~1,400 instructions a statement under
/// callgrind), so it spends the least CPU per statement. It runs only while some thread
/// is in its `block_on`, which must then be a thread with a [`PARSER_STACK`] stack.
pub fn build(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 0 {
            b.worker_threads(threads);
        }
        b
    };
    builder.enable_all().thread_stack_size(PARSER_STACK).build()
}
