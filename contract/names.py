"""What a name may be: device ids, hardware classes, model and variant names, tag keys,
bundle file names.

A name has to be safe as an MQTT topic level (no ``+``, ``#`` or ``/``), as a file or
folder name (no ``/``, never ``.`` or ``..``) and in a URL path, so one rule serves all
of them: ``NAME``. Token names are actor names in the audit log and may hold an e-mail
address, so ``TOKEN_NAME`` also allows ``@``; nothing else differs.

Each rule gives its ``pattern`` (for pydantic fields and the API schema), ``valid`` (a
yes or no) and ``check`` (a ``ValueError`` naming the field and what was expected, which
a message's ``decode`` reports as a ``MessageError``). The whole text must match: a
trailing newline is refused, here as in the API's pattern validation.

Standard library only and no edgefleet imports: ``firmware-images/build_overlay.py``
loads this file alone, beside ``controller/images.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import re

__all__ = ["NAME", "TOKEN_NAME", "NameRule"]


@dataclasses.dataclass(frozen=True)
class NameRule:
    """A rule for names.

    Attributes:
        pattern: the regular expression, anchored with ``^`` and ``$``.
        expected: the rule in words, for error messages.
    """

    pattern: str
    expected: str

    @functools.cached_property
    def _compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)

    def valid(self, text: str) -> bool:
        """Whether ``text`` follows the rule."""
        return self._compiled.fullmatch(text) is not None

    def check(self, text: str, what: str, *,
              error: type[ValueError] = ValueError) -> str:
        """``text`` if it follows the rule.

        Args:
            error: what to raise (the contract's ``InvalidRequest`` for a user's value).

        Raises:
            ValueError: it does not (``error``); the message names ``what`` and the rule.
        """
        if not self.valid(text):
            raise error(f"{what} {text!r}: expected {self.expected}")
        return text


NAME = NameRule(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                "1 to 64 letters, digits, '.', '_' or '-', the first a letter or digit")
TOKEN_NAME = NameRule(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$",
                      "1 to 64 letters, digits, '.', '_', '@' or '-', the first a letter "
                      "or digit")
