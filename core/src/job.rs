//! Jobs: what is enqueued ([`NewJob`]), what is stored ([`Job`]), and their states.
//! (Owned by the store work: issue 3.)
