"""The HTTP service of ``recall serve`` (DESIGN.md section 8): a Litestar app on uvicorn.

``app.create_app`` builds it; each module of routes serves one subject (phones, decide, rules,
dead letters, status and health); ``auth`` checks tokens and roles, ``tokens`` reads the
operator's tokens file, ``models`` are the response shapes. Importing this package loads nothing.
"""
