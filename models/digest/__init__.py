"""The weekly digest for 系部主任 and 院领导, as values: built ONCE per run for the whole college, then
sliced per recipient. No text here: handlers/digest.py (本周概况) and scheduler/notify/digest.py (the
Monday push) render it through templates/digest/. Import from the modules:

- `week`        the ISO week reported on (`digest_week`) and the day it is compared with.
- `college`     the college's data, once: data entry, card averages per class, warnings, overdue
                tasks (`build_college`, `overview_is_quick`).
- `summary`     one recipient's digest (the college or a department) as template values
                (`digest_context`, `SECTIONS`).
- `recipients`  who gets which digest (`recipients`, `scope_of`) and its outbox `PURPOSE`.
- `standing`    every student's card scores at the week's Sunday and the Sunday before, by the card
                formula (models.card.Formula) over the stored state and the entries since.
- `state`       that stored state (table digest_state): accumulators per point and student, its
                record, loading and saving.
- `fold`        the merge of a state with the entries recorded since it (the delta).
- `weeks`       each scope's domain means per Sunday (table digest_means), kept by the weekly job:
                the dashboard's chart of the weeks, the card page's class average.
"""
