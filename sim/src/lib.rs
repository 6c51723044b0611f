//! The otamesh simulator (to be built).
