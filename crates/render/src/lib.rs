//! `tether render`: the same declaration as files the existing engines run natively. Pure:
//! same input, same bytes.

pub mod compose;

/// Why a declaration cannot be rendered.
#[derive(Debug, PartialEq, Eq)]
pub enum RenderError {
    /// A field that the target cannot express, or that it needs and is missing.
    Field {
        owner: String,
        field: String,
        message: String,
    },
    Plan(String),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Field {
                owner,
                field,
                message,
            } => write!(f, "{owner}: {field}: {message}"),
            RenderError::Plan(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for RenderError {}
