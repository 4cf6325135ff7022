//! Twilio REST client and call control (to be written).
