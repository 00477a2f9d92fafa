"""The matchers, one module per pattern family (mirroring :mod:`fxfusion.patterns` and :mod:`fxfusion.rewrites`).

Each ``match_*`` function takes ``(ctx, anchor)`` -- a :class:`~fxfusion.matchers.common.Context` and a node of one
of its anchor kinds -- walks a bounded number of steps from the anchor and returns a
:class:`~fxfusion.matchers.common.Candidate` (the site's nodes, shape, dtype, roles and its own legality reasons) or
None.  The registry that orders them, the legality rules every site shares and the assembly into sites are in
:mod:`fxfusion.match`.
"""
