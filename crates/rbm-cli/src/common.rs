//! Conventions shared by every subcommand: the thread pool, progress display (a bar with ETA on a
//! terminal, plain lines otherwise), JSON output and the per-epoch metrics file.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Options every command accepts.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Worker threads (default: all cores). Results are identical run to run for a given count.
    #[arg(long, global = true, value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Print one JSON object with the results instead of a human-readable report.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress display.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// Most threads `--threads` accepts: far past any core count, short of spawning forever.
const MAX_THREADS: usize = 1024;

fn parse_threads(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!("expected a thread count from 1 to {MAX_THREADS}")),
    }
}

impl Common {
    /// The number of threads to use.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// Runs `f` inside a rayon pool of the chosen size, so faer and rayon work both use it.
    pub fn in_pool<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads())
            .build()
            .context("could not start the thread pool")?;
        Ok(pool.install(f))
    }

    /// A line on stderr about a long step (reading, preparing, evaluating), silent under
    /// `--quiet` or `--json`: at Netflix scale those take tens of seconds between epochs' bars.
    pub fn status(&self, msg: impl std::fmt::Display) {
        if !(self.quiet || self.json) {
            eprintln!("{msg}");
        }
    }

    /// A progress display for `total` steps, silent under `--quiet` or `--json`.
    pub fn progress(&self, total: u64, what: &str) -> Progress {
        Progress::new(total, what, !(self.quiet || self.json))
    }
}

/// Progress display: an indicatif bar with ETA when stderr is a terminal, plain lines otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
}

impl Progress {
    fn new(total: u64, what: &str, visible: bool) -> Self {
        if !visible {
            return Progress {
                bar: None,
                plain: false,
            };
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} (elapsed {elapsed}, ETA {eta})",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_prefix(what.to_string());
            Progress {
                bar: Some(bar),
                plain: false,
            }
        } else {
            Progress {
                bar: None,
                plain: true,
            }
        }
    }

    /// Reports one finished step with a short message.
    pub fn step(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.to_string());
            bar.inc(1);
        } else if self.plain {
            eprintln!("{msg}");
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Refuses, before any work starts, output paths that name a directory, the same file as
/// another output, or an input file: otherwise a run would fail at its end with some outputs
/// written, or overwrite its own data. `outputs` are `(flag, path)`; absent options are `None`.
pub fn check_outputs(outputs: &[(&str, Option<&Path>)], inputs: &[&Path]) -> Result<()> {
    // The file as it will be opened: its parent resolved (it may not exist yet), so that
    // `out/./m` and `out/m` compare equal.
    let resolved = |p: &Path| -> Option<PathBuf> {
        let name = p.file_name()?;
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new("."));
        Some(match parent.canonicalize() {
            Ok(dir) => dir.join(name),
            Err(_) => p.to_path_buf(),
        })
    };
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    for &(flag, path) in outputs {
        let Some(path) = path else { continue };
        let Some(file) = resolved(path).filter(|_| !path.is_dir()) else {
            bail!("{flag} {}: is a directory, not a file", path.display());
        };
        if let Some((other, _)) = seen.iter().find(|(_, f)| *f == file) {
            bail!(
                "{flag} and {other} both name {}: give each output its own file",
                path.display()
            );
        }
        if let Some(input) = inputs
            .iter()
            .find(|i| i.is_file() && resolved(i).is_some_and(|f| f == file))
        {
            bail!(
                "{flag} {} would overwrite the input file {}",
                path.display(),
                input.display()
            );
        }
        seen.push((flag, file));
    }
    Ok(())
}

/// Refuses a run whose model cannot fit in memory: `bytes` (an estimate of what training
/// allocates) against what the system reports available (Linux; elsewhere not checked), so a
/// typo such as `--hidden 4000000000` gets an error, not an allocation abort minutes later.
pub fn check_memory(what: &str, bytes: f64) -> Result<()> {
    let Some(available) = available_memory() else {
        return Ok(());
    };
    if bytes > available as f64 {
        let gib = |b: f64| b / (1u64 << 30) as f64;
        bail!(
            "{what} needs about {:.1} GiB, more than the {:.1} GiB of memory available",
            gib(bytes),
            gib(available as f64)
        );
    }
    Ok(())
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Prints a JSON value as one line on stdout.
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// A JSON-lines metrics file: one object per line, flushed after each so it can be followed live.
pub struct MetricsFile {
    out: BufWriter<File>,
    path: PathBuf,
}

impl MetricsFile {
    /// Opens (truncates) the metrics file if a path was given.
    pub fn create(path: Option<&Path>) -> Result<Option<Self>> {
        path.map(|p| {
            let f = File::create(p)
                .with_context(|| format!("cannot create metrics file {}", p.display()))?;
            Ok(MetricsFile {
                out: BufWriter::new(f),
                path: p.to_path_buf(),
            })
        })
        .transpose()
    }

    /// Appends one record.
    pub fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        writeln!(self.out, "{value}")
            .and_then(|_| self.out.flush())
            .with_context(|| format!("cannot write metrics file {}", self.path.display()))
    }
}
