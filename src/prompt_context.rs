//! Template variables for Ultravox prompts (to be written).
