"""MES integration service: every disposition reaches MES/ERP exactly once per frame, via an outbox."""
