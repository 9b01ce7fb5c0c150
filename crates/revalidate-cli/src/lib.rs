//! The `revalidate` command's building blocks.
//!
//! - [`demo`]: the sample users API (`revalidate demo`);
//! - [`serve`]: the caching reverse proxy (`revalidate serve`);
//! - [`bench`]: the savings measurement and diagnosis of any API (`revalidate bench`);
//! - [`keymap`]: how a configuration keys, tags and purges (`revalidate routes`,
//!   `revalidate explain`).

// Only the binaries name an unsafe symbol (jemalloc's options); the libraries never.
#![forbid(unsafe_code)]

pub mod bench;
pub mod demo;
pub mod keymap;
pub mod serve;
