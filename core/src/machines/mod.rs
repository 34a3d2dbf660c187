//! The Fly Machines API client. (Issue 2.)
