"""Real HTTP sandboxes on loopback: the Zenslearn LMS and the ERP fakes (demo, dry runs, tests)."""
