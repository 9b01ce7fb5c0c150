//! The `revalidate` command's building blocks.
//!
//! - [`demo`]: the sample users API (`revalidate demo`);
//! - [`serve`]: the caching reverse proxy (`revalidate serve`).

pub mod demo;
pub mod serve;
