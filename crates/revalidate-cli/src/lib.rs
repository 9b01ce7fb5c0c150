//! The `revalidate` command's building blocks.
//!
//! - [`demo`]: the sample users API (`revalidate demo`);
//! - [`serve`]: the caching reverse proxy (`revalidate serve`).

// Only the binaries name an unsafe symbol (jemalloc's options); the libraries never.
#![forbid(unsafe_code)]

pub mod demo;
pub mod serve;
