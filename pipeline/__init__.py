"""Usage metering for conversational-AI platforms.

``ENGINE`` says how the rules engine runs in this process: "compiled" (mypyc, see
``pipeline.infra.native``) or "interpreted"; the results are the same either way.
"""

from pipeline.infra import native as _native

ENGINE = _native.choose()
