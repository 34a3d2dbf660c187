//! The durable queue. (Issue 3.)
