//! Ultravox REST client (to be written).
