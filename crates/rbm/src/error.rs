//! The library's typed errors: every failure a caller can act on names what failed and where.

use std::path::PathBuf;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum RbmError {
    /// A hyperparameter or argument outside its valid range.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParam {
        /// The parameter's name as the user spells it.
        name: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// An operating-system error on a named file. (The I/O error is part of the message rather
    /// than a `source`, so error chains do not print it twice.)
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A text file with a bad line (1-based line number).
    #[error("{}:{line}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A binary file with bad content at a byte offset.
    #[error("{} (byte offset {offset}): {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Byte offset where the problem was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Arrays whose shapes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A computation refused because it would not finish in reasonable time or memory.
    #[error("too large: {0}")]
    TooLarge(String),
    /// An optional backend that this build does not include.
    #[error("backend `{0}` is not available in this build (rebuild with `--features {0}`)")]
    BackendUnavailable(&'static str),
}

/// Shorthand for results carrying [`RbmError`].
pub type Result<T, E = RbmError> = std::result::Result<T, E>;

impl RbmError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        RbmError::Io {
            path: path.into(),
            error,
        }
    }

    /// A bad line in a text file.
    pub fn parse(path: impl Into<PathBuf>, line: usize, reason: impl Into<String>) -> Self {
        RbmError::Parse {
            path: path.into(),
            line,
            reason: reason.into(),
        }
    }

    /// Bad bytes in a binary file.
    pub fn format(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        RbmError::Format {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// A rejected parameter.
    pub fn param(name: &'static str, reason: impl Into<String>) -> Self {
        RbmError::InvalidParam {
            name,
            reason: reason.into(),
        }
    }
}

/// `name()` and `FromStr` for a small enum that model files and the command line spell out:
/// each variant's name, and for anything else an error for parameter `$param` that lists them
/// (`spelled!(PredictMethod, "predict", { Exact => "exact", MeanField => "mean-field" })`).
macro_rules! spelled {
    ($ty:ident, $param:literal, { $($var:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The name model files and the command line use.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$var => $name,)+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::error::RbmError;

            fn from_str(s: &str) -> $crate::error::Result<Self> {
                match s {
                    $($name => Ok($ty::$var),)+
                    _ => Err($crate::error::RbmError::param(
                        $param,
                        format!(
                            "`{}`: expected {}",
                            $crate::error::shown(s),
                            [$($name),+].join(" or ")
                        ),
                    )),
                }
            }
        }
    };
}
pub(crate) use spelled;

/// `s` as it may appear in a message: control characters (a stray CR, a NUL, a terminal escape)
/// escaped, and long text cut short (a file may hold anything where a number or a name belongs).
pub fn shown(s: &str) -> String {
    const MAX: usize = 60;
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}
