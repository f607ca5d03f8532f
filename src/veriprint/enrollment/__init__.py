"""Enrollment (trust on deploy): learn what *this* deployment answers, then fingerprint that.

Right after the owner deploys a model (the moment they trust the deployment), a *pool*
fingerprint (made with many more samples than it will keep) is sent to the live endpoint
in several rounds, through the verifier's query loop (:mod:`veriprint.verification.send`).
A candidate is **kept** only when

* its answers agree with the local fingerprint beyond the declared tolerance
  (otherwise the endpoint may not serve this model at all, and enrollment is refused);
* every repeat gave the same answer under the spec, and numeric answers spread by no
  more than the declared tolerance;
* it is decided under the enrolled noise floor, and every answer seen during
  enrollment matches the enrolled fingerprint (so the fingerprint would have said
  INTACT on each round);
* for a twin pair, both members pass (pairs are kept whole).

The enrolled fingerprint stores, where the target reveals values, the endpoint's own
answers as the expected outputs, and a noise floor that covers the spread measured over
the kept candidates.

One module per job:

=============  ===========================================  ==================================
job            module                                       what it does
=============  ===========================================  ==================================
rounds         :mod:`veriprint.enrollment.rounds`           each round's order, batch size, replica
agreement      :mod:`veriprint.enrollment.agreement`        refuse answers beyond the tolerance
floor          :mod:`veriprint.enrollment.floor`            stability, the enrolled expectation and floor
subset         :mod:`veriprint.enrollment.subset`           whole pairs first, by reach
describe       :mod:`veriprint.enrollment.describe`         the file and ``meta["enrollment"]``
classifier     :mod:`veriprint.enrollment.classifier`       the stages in order
lm             :mod:`veriprint.enrollment.lm`               the same for a language model's prompts
report         :mod:`veriprint.enrollment.report`           the reports and the refusal
arguments      :mod:`veriprint.enrollment.arguments`        the checks of the arguments both share
=============  ===========================================  ==================================

:func:`enroll` is the entry (:mod:`veriprint.enrollment.entry`): a classifier's pool goes to
:func:`~veriprint.enrollment.classifier.enroll_classifier`, a language model's
(:class:`~veriprint.lm.fingerprint.LmFingerprint`) to :func:`enroll_lm`.
"""

from __future__ import annotations

from veriprint.enrollment.entry import enroll
from veriprint.enrollment.lm import enroll_lm
from veriprint.enrollment.report import (
    CandidateStats,
    EnrollmentError,
    EnrollmentReport,
    LmCandidateStats,
    LmEnrollmentReport,
)
from veriprint.enrollment.rounds import DEFAULT_BATCH_SIZES

__all__ = ["DEFAULT_BATCH_SIZES", "CandidateStats", "EnrollmentError", "EnrollmentReport", "LmCandidateStats",
           "LmEnrollmentReport", "enroll", "enroll_lm"]
