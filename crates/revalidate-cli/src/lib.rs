//! The `revalidate` command's building blocks.
//!
//! - [`demo`]: the sample users API (`revalidate demo`).

pub mod demo;
