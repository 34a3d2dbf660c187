//! A local Fly Machines API whose machines are local processes. (Issue 2.)
