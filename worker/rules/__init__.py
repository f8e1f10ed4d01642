"""The reminder rules, pure (docs/reminders.md): reminder slots and kinds, the
misfire verdict and grace, quiet hours, repeat until done, the snooze instant, and
recurrences (an RRULE of `worker.rrule` in the task's zone)."""
