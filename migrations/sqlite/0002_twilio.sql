-- Twilio status callbacks carry a SequenceNumber and can arrive out of order: the calls row
-- keeps the sequence of the status it shows, so an older event cannot overwrite a newer one.
ALTER TABLE calls ADD COLUMN status_sequence INTEGER;
