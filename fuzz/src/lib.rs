//! The fuzz targets' bodies, shared with the stable corpus replay
//! (`tests/tests/fuzz_corpus.rs` includes `checks.rs` directly).
pub mod checks;
