//! Progress display for `shardwire rebalance`.
//!
//! [`Progress`] counts moved rows (cheap and thread-safe: [`Progress::add_rows`] is one
//! atomic add) and shows them on stderr:
//!
//! - **Terminal** (stderr is a tty): one line redrawn in place (`\r` + clear-line) on every
//!   [`tick`](Progress::tick), e.g.
//!   `[########............]  42% 123,456/290,000 rows  51,234 rows/s  ETA 0:03  unit users+orders s0 -> s3`,
//!   cut to the terminal width so it never wraps.
//! - **Not a terminal** (a log file, CI): a plain line at most every 2 s and on each unit
//!   change, e.g. `progress: 123456/290000 rows (42%), 51234 rows/s, eta 3 s, unit users+orders s0 -> s3`.
//!
//! **Rate.** rows/s is measured over a sliding window of the last 5 s of ticks, so it
//! follows the current speed (units differ a lot: wide rows, indexes); until the window spans
//! a second it falls back to the overall rate since the start, and is unknown (`?`) in the
//! first half second. The ETA is the remaining rows (planned total minus rows done) divided
//! by that rate, `?` when the rate or the total is unknown (a total of 0 means "unknown":
//! no bar or percentage is shown then).
//!
//! Anything else written to stderr while a bar is shown would break the line: print through
//! [`Progress::log`], which clears the bar, prints the line, and redraws the bar.
//! [`Progress::finish`] stops the display (a final bar plus newline on a terminal, a final
//! line otherwise) and returns a [`Summary`].

use std::collections::VecDeque;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often [`Progress::spawn_ticker`] redraws.
pub const TICK_INTERVAL: Duration = Duration::from_millis(200);

/// Span of the sliding window the rate is measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Minimum time between two plain (non-terminal) progress lines.
pub const PLAIN_INTERVAL: Duration = Duration::from_secs(2);

/// Width of the terminal bar between its brackets.
pub const BAR_WIDTH: usize = 20;

/// Clear the whole current line and return to its start.
const CLEAR_LINE: &str = "\r\x1b[2K";

/// Final figures of a run, returned by [`Progress::finish`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Rows moved.
    pub rows: u64,
    /// Time from [`Progress::new`] to [`Progress::finish`].
    pub elapsed: Duration,
    /// Overall rate: `rows / elapsed` (0 when no time elapsed).
    pub rows_per_sec: f64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rows in {} ({} rows/s)",
            format_count(self.rows),
            format_duration(self.elapsed.as_secs()),
            format_count(self.rows_per_sec.round() as u64)
        )
    }
}

/// Rate over a sliding window of `(time since start, rows done)` samples.
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: VecDeque<(Duration, u64)>,
}

impl RateWindow {
    /// Records a sample at `at` (time since start) and returns the current rate in rows/s:
    /// over the window once it spans at least 1 s, else the overall rate once `at` is at
    /// least 0.5 s, else `None`.
    pub fn sample(&mut self, at: Duration, done: u64) -> Option<f64> {
        self.samples.push_back((at, done));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| at.saturating_sub(t) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let &(t0, d0) = self.samples.front()?;
        let span = at.saturating_sub(t0);
        if span >= Duration::from_secs(1) {
            Some(done.saturating_sub(d0) as f64 / span.as_secs_f64())
        } else if at >= Duration::from_millis(500) {
            Some(done as f64 / at.as_secs_f64())
        } else {
            None
        }
    }
}

/// Mutable display state, behind the mutex.
struct Inner {
    /// Current unit of work, e.g. `users+orders s0 -> s3`.
    unit: String,
    window: RateWindow,
    /// Rate computed at the last tick.
    rate: Option<f64>,
    /// When the last plain line was printed.
    last_plain: Instant,
    /// Whether a bar is currently on the terminal line.
    bar_shown: bool,
    /// Set by the first `finish`.
    summary: Option<Summary>,
    out: Box<dyn Write + Send>,
    /// Cut terminal lines to the width of stderr's terminal.
    fit_to_terminal: bool,
}

/// Row-count progress of a rebalance, shown on stderr. Share it as `Arc<Progress>`.
pub struct Progress {
    total: u64,
    done: AtomicU64,
    start: Instant,
    tty: bool,
    finished: AtomicBool,
    inner: Mutex<Inner>,
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("total", &self.total)
            .field("done", &self.rows())
            .field("tty", &self.tty)
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}

impl Progress {
    /// Progress towards `total_rows` (the rows the plan expects to move; 0 = unknown),
    /// written to stderr, as a bar if stderr is a terminal.
    pub fn new(total_rows: u64) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let mut p = Progress::with_output(total_rows, tty, Box::new(std::io::stderr()));
        p.inner.get_mut().fit_to_terminal = tty;
        p
    }

    /// Progress written to `out`, as a bar if `tty` (lines are not cut to any width).
    pub fn with_output(total_rows: u64, tty: bool, out: Box<dyn Write + Send>) -> Progress {
        let start = Instant::now();
        Progress {
            total: total_rows,
            done: AtomicU64::new(0),
            start,
            tty,
            finished: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                unit: String::new(),
                window: RateWindow::default(),
                rate: None,
                last_plain: start,
                bar_shown: false,
                summary: None,
                out,
                fit_to_terminal: false,
            }),
        }
    }

    /// Names the current unit of work (e.g. `users+orders s0 -> s3`); shown at once (a
    /// redraw, or a plain line).
    pub fn set_unit(&self, name: &str) {
        let mut inner = self.inner.lock();
        if self.is_finished() {
            return;
        }
        inner.unit.clear();
        inner.unit.push_str(name);
        self.draw(&mut inner, Instant::now());
    }

    /// Counts `n` more moved rows (one atomic add; call per batch).
    pub fn add_rows(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Rows counted so far.
    pub fn rows(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Whether [`finish`](Self::finish) was called.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Samples the rate and redraws the bar (terminal) or prints a line if the last one is
    /// [`PLAIN_INTERVAL`] old (otherwise). Call every [`TICK_INTERVAL`] or so, or use
    /// [`spawn_ticker`](Self::spawn_ticker). Does nothing after `finish`.
    pub fn tick(&self) {
        let mut inner = self.inner.lock();
        if self.is_finished() {
            return;
        }
        let now = Instant::now();
        inner.rate = inner
            .window
            .sample(now.saturating_duration_since(self.start), self.rows());
        if self.tty || now.saturating_duration_since(inner.last_plain) >= PLAIN_INTERVAL {
            self.draw(&mut inner, now);
        }
    }

    /// Prints `line` without breaking the bar: clears it, prints the line, redraws it.
    pub fn log(&self, line: &str) {
        let mut inner = self.inner.lock();
        if self.tty && inner.bar_shown {
            let _ = writeln!(inner.out, "{CLEAR_LINE}{line}");
            inner.bar_shown = false;
            if !self.is_finished() {
                self.draw_bar(&mut inner);
            }
        } else {
            let _ = writeln!(inner.out, "{line}");
        }
        let _ = inner.out.flush();
    }

    /// Stops the display (a final bar and newline on a terminal, a final line otherwise)
    /// and returns the totals. Later calls return the same summary and print nothing.
    pub fn finish(&self) -> Summary {
        let mut inner = self.inner.lock();
        if let Some(summary) = inner.summary {
            return summary;
        }
        let elapsed = self.start.elapsed();
        let rows = self.rows();
        let secs = elapsed.as_secs_f64();
        let summary = Summary {
            rows,
            elapsed,
            rows_per_sec: if secs > 0.0 { rows as f64 / secs } else { 0.0 },
        };
        inner.summary = Some(summary);
        inner.rate = Some(summary.rows_per_sec);
        if self.tty {
            self.draw_bar(&mut inner);
            let _ = writeln!(inner.out);
            inner.bar_shown = false;
        } else {
            let _ = writeln!(inner.out, "progress: finished, {summary}");
        }
        let _ = inner.out.flush();
        self.finished.store(true, Ordering::Release);
        summary
    }

    /// Starts a tokio task calling [`tick`](Self::tick) every [`TICK_INTERVAL`]; it ends
    /// once [`finish`](Self::finish) was called.
    pub fn spawn_ticker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let progress = Arc::clone(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                if progress.is_finished() {
                    break;
                }
                progress.tick();
            }
        })
    }

    /// Shows the current state: the bar, or a plain line.
    fn draw(&self, inner: &mut Inner, now: Instant) {
        if self.tty {
            self.draw_bar(inner);
        } else {
            let line = format_plain(self.rows(), self.total, inner.rate, &inner.unit);
            let _ = writeln!(inner.out, "{line}");
            inner.last_plain = now;
        }
        let _ = inner.out.flush();
    }

    /// Redraws the terminal bar in place.
    fn draw_bar(&self, inner: &mut Inner) {
        let mut line = format_bar(self.rows(), self.total, inner.rate, &inner.unit, BAR_WIDTH);
        if inner.fit_to_terminal {
            if let Some(columns) = terminal_columns() {
                line = fit_width(&line, columns);
            }
        }
        let _ = write!(inner.out, "{CLEAR_LINE}{line}");
        let _ = inner.out.flush();
        inner.bar_shown = true;
    }
}

/// `n` with thousands separators: `1234567` -> `1,234,567`.
pub fn format_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration as `m:ss`, or `h:mm:ss` from one hour on.
pub fn format_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// Seconds left (rounded up): remaining rows over `rate`; `Some(0)` once `done` reaches
/// `total`; `None` when `total` is 0 (unknown) or the rate is unknown or zero.
pub fn eta_secs(done: u64, total: u64, rate: Option<f64>) -> Option<u64> {
    if total == 0 {
        return None;
    }
    let remaining = total.saturating_sub(done);
    if remaining == 0 {
        return Some(0);
    }
    let rate = rate.filter(|r| r.is_finite() && *r > 0.0)?;
    Some((remaining as f64 / rate).ceil() as u64)
}

/// Percentage of `total` done, floored and capped at 100; `None` if `total` is 0.
pub fn percent(done: u64, total: u64) -> Option<u64> {
    if total == 0 {
        return None;
    }
    Some((u128::from(done) * 100 / u128::from(total)).min(100) as u64)
}

/// The terminal line: `[####......]  42% 123,456/290,000 rows  51,234 rows/s  ETA 0:03  unit X`
/// with a bar `width` characters wide. With `total` 0 the bar, percentage and total are
/// left out; an unknown rate or ETA shows as `?`; an empty unit is left out.
pub fn format_bar(done: u64, total: u64, rate: Option<f64>, unit: &str, width: usize) -> String {
    let mut line = String::new();
    match percent(done, total) {
        Some(pct) => {
            let filled = (u128::from(done.min(total)) * width as u128 / u128::from(total)) as usize;
            line.push('[');
            line.extend(std::iter::repeat_n('#', filled));
            line.extend(std::iter::repeat_n('.', width - filled));
            line.push_str(&format!(
                "] {pct:>3}% {}/{} rows",
                format_count(done),
                format_count(total)
            ));
        }
        None => line.push_str(&format!("{} rows", format_count(done))),
    }
    let rate_text = rate.map_or_else(|| "?".to_string(), |r| format_count(r.round() as u64));
    let eta_text = eta_secs(done, total, rate).map_or_else(|| "?".to_string(), format_duration);
    line.push_str(&format!("  {rate_text} rows/s  ETA {eta_text}"));
    if !unit.is_empty() {
        line.push_str("  unit ");
        line.push_str(unit);
    }
    line
}

/// The non-terminal line:
/// `progress: 123456/290000 rows (42%), 51234 rows/s, eta 3 s, unit X`. With `total` 0 the
/// total and percentage are left out; unknowns show as `?`; an empty unit is left out.
pub fn format_plain(done: u64, total: u64, rate: Option<f64>, unit: &str) -> String {
    let mut line = match percent(done, total) {
        Some(pct) => format!("progress: {done}/{total} rows ({pct}%)"),
        None => format!("progress: {done} rows"),
    };
    match rate {
        Some(r) => line.push_str(&format!(", {} rows/s", r.round() as u64)),
        None => line.push_str(", ? rows/s"),
    }
    match eta_secs(done, total, rate) {
        Some(s) => line.push_str(&format!(", eta {s} s")),
        None => line.push_str(", eta ?"),
    }
    if !unit.is_empty() {
        line.push_str(", unit ");
        line.push_str(unit);
    }
    line
}

/// `line` cut to `columns - 1` characters (writing the last column makes some terminals
/// wrap, which would break the in-place redraw).
pub fn fit_width(line: &str, columns: usize) -> String {
    let max = columns.saturating_sub(1).max(1);
    match line.char_indices().nth(max) {
        Some((cut, _)) => line[..cut].to_string(),
        None => line.to_string(),
    }
}

/// Width of stderr's terminal: the `TIOCGWINSZ` ioctl, else `$COLUMNS`.
fn terminal_columns() -> Option<usize> {
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the struct we pass; a failure leaves
    // it zeroed and returns -1, both of which are handled.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 {
        return Some(usize::from(ws.ws_col));
    }
    std::env::var("COLUMNS")
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&c| c > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock())).unwrap()
        }
    }

    #[test]
    fn counts() {
        assert_eq!(format_count(0), "0");
        assert_eq!(format_count(999), "999");
        assert_eq!(format_count(1000), "1,000");
        assert_eq!(format_count(123_456), "123,456");
        assert_eq!(format_count(1_234_567), "1,234,567");
        assert_eq!(format_count(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0), "0:00");
        assert_eq!(format_duration(3), "0:03");
        assert_eq!(format_duration(61), "1:01");
        assert_eq!(format_duration(3599), "59:59");
        assert_eq!(format_duration(3600), "1:00:00");
        assert_eq!(format_duration(90_061), "25:01:01");
    }

    #[test]
    fn eta_and_percent() {
        assert_eq!(eta_secs(100, 0, Some(10.0)), None);
        assert_eq!(eta_secs(0, 100, None), None);
        assert_eq!(eta_secs(0, 100, Some(0.0)), None);
        assert_eq!(eta_secs(0, 100, Some(f64::NAN)), None);
        assert_eq!(eta_secs(0, 100, Some(30.0)), Some(4));
        assert_eq!(eta_secs(100, 100, None), Some(0));
        assert_eq!(eta_secs(150, 100, None), Some(0));
        assert_eq!(percent(5, 0), None);
        assert_eq!(percent(0, 7), Some(0));
        assert_eq!(percent(123_456, 290_000), Some(42));
        assert_eq!(percent(999, 1000), Some(99));
        assert_eq!(percent(2000, 1000), Some(100));
        assert_eq!(percent(u64::MAX, u64::MAX), Some(100));
    }

    #[test]
    fn bar_line() {
        assert_eq!(
            format_bar(
                123_456,
                290_000,
                Some(51_234.4),
                "users+orders s0 -> s3",
                10
            ),
            "[####......]  42% 123,456/290,000 rows  51,234 rows/s  ETA 0:04  unit users+orders s0 -> s3"
        );
        assert_eq!(
            format_bar(0, 10, None, "", 4),
            "[....]   0% 0/10 rows  ? rows/s  ETA ?"
        );
        assert_eq!(
            format_bar(10, 10, Some(2.0), "u", 4),
            "[####] 100% 10/10 rows  2 rows/s  ETA 0:00  unit u"
        );
        // More rows than planned: full bar, capped percentage.
        assert_eq!(
            format_bar(12, 10, Some(2.0), "", 4),
            "[####] 100% 12/10 rows  2 rows/s  ETA 0:00"
        );
        // Unknown total.
        assert_eq!(
            format_bar(1_500, 0, Some(100.0), "t s1 -> s2", 4),
            "1,500 rows  100 rows/s  ETA ?  unit t s1 -> s2"
        );
    }

    #[test]
    fn plain_line() {
        assert_eq!(
            format_plain(123_456, 290_000, Some(51_234.0), "users+orders s0 -> s3"),
            "progress: 123456/290000 rows (42%), 51234 rows/s, eta 4 s, unit users+orders s0 -> s3"
        );
        assert_eq!(
            format_plain(5, 0, None, ""),
            "progress: 5 rows, ? rows/s, eta ?"
        );
    }

    #[test]
    fn fitting() {
        assert_eq!(fit_width("abcdef", 80), "abcdef");
        assert_eq!(fit_width("abcdef", 4), "abc");
        assert_eq!(fit_width("ééééé", 3), "éé");
        assert_eq!(fit_width("abc", 0), "a");
    }

    #[test]
    fn rate_window() {
        let ms = Duration::from_millis;
        let mut w = RateWindow::default();
        assert_eq!(w.sample(ms(200), 100), None);
        // Overall rate until the window spans a second.
        assert_eq!(w.sample(ms(500), 500), Some(1000.0));
        assert_eq!(w.sample(ms(1000), 1000), Some(1000.0));
        assert_eq!(w.sample(ms(1200), 1100), Some(1000.0));
        // The window follows a slowdown: 100 rows/s from 1.2 s on.
        let mut t = 1200;
        let mut done = 1100;
        let mut last = None;
        while t < 10_000 {
            t += 200;
            done += 20;
            last = w.sample(ms(t), done);
        }
        let last = last.unwrap();
        assert!((last - 100.0).abs() < 1e-9, "{last}");
        assert!(w.samples.len() <= 27, "{}", w.samples.len());
    }

    #[test]
    fn plain_output() {
        let out = Shared::default();
        let p = Progress::with_output(100, false, Box::new(out.clone()));
        p.set_unit("t s0 -> s1");
        assert_eq!(
            out.take(),
            "progress: 0/100 rows (0%), ? rows/s, eta ?, unit t s0 -> s1\n"
        );
        p.add_rows(40);
        // Less than PLAIN_INTERVAL since the last line: nothing.
        p.tick();
        assert_eq!(out.take(), "");
        p.log("copied t");
        assert_eq!(out.take(), "copied t\n");
        p.add_rows(60);
        let s = p.finish();
        assert_eq!(s.rows, 100);
        assert!(out
            .take()
            .starts_with("progress: finished, 100 rows in 0:00 ("));
        assert_eq!(p.finish(), s);
        p.tick();
        p.set_unit("x");
        assert_eq!(out.take(), "");
    }

    #[test]
    fn tty_output() {
        let out = Shared::default();
        let p = Progress::with_output(10, true, Box::new(out.clone()));
        p.add_rows(5);
        p.tick();
        assert_eq!(
            out.take(),
            "\r\x1b[2K[##########..........]  50% 5/10 rows  ? rows/s  ETA ?"
        );
        p.set_unit("u");
        assert!(out.take().ends_with("ETA ?  unit u"));
        p.log("hello");
        let text = out.take();
        assert!(
            text.starts_with("\r\x1b[2Khello\n\r\x1b[2K[##########"),
            "{text:?}"
        );
        p.add_rows(5);
        p.finish();
        let text = out.take();
        assert!(text.starts_with("\r\x1b[2K[####################] 100% 10/10 rows"));
        assert!(text.ends_with("ETA 0:00  unit u\n"), "{text:?}");
        // After finish, log prints plainly and nothing redraws.
        p.log("bye");
        p.tick();
        assert_eq!(out.take(), "bye\n");
    }

    #[tokio::test]
    async fn ticker_stops_on_finish() {
        let out = Shared::default();
        let p = Arc::new(Progress::with_output(0, true, Box::new(out.clone())));
        let handle = p.spawn_ticker();
        p.add_rows(3);
        tokio::time::sleep(TICK_INTERVAL * 2).await;
        assert!(out.take().contains("3 rows"));
        p.finish();
        tokio::time::timeout(TICK_INTERVAL * 5, handle)
            .await
            .unwrap()
            .unwrap();
    }
}
