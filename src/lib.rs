//! chat-server (work in progress)
