pub use streamwatch::*;
