//! The retry policy: pure `(attempt, failure) -> Retry { at } | Dead`. (Issue 3.)
