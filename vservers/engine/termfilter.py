"""Guest output on the operator's terminal: filters that keep a guest from driving it.

A terminal acts on what is written to it. Some control sequences make it answer by writing
into its own input, which is then read by whatever reads that terminal next: the guest's
shell during `vserver enter`, the operator's host shell after it (device status and attribute
reports, DECRQSS, the window title report of CSI 21t, the classic way to type a command into
the operator's shell). Others set the clipboard (OSC 52), the window and icon titles,
hyperlinks, colours and fonts (OSC), send strings to the terminal (DCS, APC, PM, SOS: sixel,
tmux passthrough, kitty graphics), resize or move the window (CSI t), switch the printer
on (CSI 5i) or lock the keyboard (CSI 2h). See xterm's "Control Sequences" (ctlseqs) and
the "terminal escape injection" write-ups (e.g. CVE-2003-0063 and CVE-2022-45872 for the
title report, OSC 52 reads and writes).

Two filters, both incremental (output arrives in chunks split anywhere, even inside a UTF-8
character or an escape sequence) and both giving back every other byte exactly:

- PlainFilter, for `vserver exec`: no control sequence at all. ESC, the other C0 controls but
  tab, newline, carriage return and backspace, DEL and the C1 controls are shown as `cat -v`
  shows them (ESC as ^[).
- TerminalFilter, for `vserver enter` (a full-screen program needs colours, cursor moves and
  erasing): an allow-list. SGR, cursor movement, erasing, scrolling regions, tab stops,
  character sets and a listed set of DEC private modes (cursor keys, alternate screen, cursor
  visibility, mouse reports, bracketed paste) pass; every other sequence, and every OSC, DCS,
  SOS, PM and APC string, is dropped whole.

Both read the stream as UTF-8 with the bytes that are not UTF-8 kept as they are
(surrogateescape), and treat a C1 control as one both as a raw byte 0x80-0x9f and as the
characters U+0080-U+009F: terminals differ in which they obey.

Written here, not taken from a library: the libraries that strip ANSI sequences work on whole
strings with regular expressions and strip colours too, and terminal emulators (pyte) parse
but do not give the stream back. The parser follows the states of the DEC/ECMA-48 parser
described at vt100.net (ground, escape, escape intermediate, CSI, control string).
"""

from __future__ import annotations

import codecs
import re

_ESC = "\x1b"
# Characters that are not plain text: C0, DEL, C1 and bytes 0x80-0x9f that are not UTF-8.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\udc80-\udc9f]")


def _c1(ch: str) -> int | None:
    """The C1 control CH stands for (0x80-0x9f), as a character or as a lone byte."""
    code = ord(ch)
    if 0x80 <= code <= 0x9F:
        return code
    if 0xDC80 <= code <= 0xDC9F:
        return code - 0xDC00
    return None


class _Utf8:
    """Bytes to text and back, exactly, across chunk boundaries."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")

    def decode(self, data: bytes, final: bool) -> str:
        return self._decoder.decode(data, final)

    @staticmethod
    def encode(text: str) -> bytes:
        return text.encode("utf-8", "surrogateescape")


def _caret(code: int) -> str:
    """How `cat -v` shows the control CODE."""
    if code == 0x7F:
        return "^?"
    if code >= 0x80:
        return "M-" + _caret(code - 0x80)
    return "^" + chr(code + 0x40)


class PlainFilter:
    """Every control but tab, newline, carriage return and backspace shown as `cat -v` does."""

    _SHOWN = re.compile("[\x00-\x07\x0b\x0c\x0e-\x1f\x7f-\x9f\udc80-\udc9f]")

    def __init__(self) -> None:
        self._utf8 = _Utf8()

    def feed(self, data: bytes, final: bool = False) -> bytes:
        text = self._utf8.decode(data, final)
        return self._utf8.encode(self._SHOWN.sub(lambda m: _caret(_c1(m[0]) or ord(m[0])), text))


# -- the terminal filter ---------------------------------------------------------------------

_GROUND, _ESCAPE, _ESCAPE_INTERMEDIATE, _CSI, _STRING, _STRING_ESCAPE = range(6)

# C0 controls passed on: BEL, BS, HT, LF, VT, FF, CR, SO, SI. Not ENQ (the answerback) nor
# the rest, which terminals ignore or use to start or cancel sequences.
_PASSED_C0 = frozenset("\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f")
_CANCEL = frozenset("\x18\x1a")  # CAN, SUB: end any sequence
# ESC + final with no intermediate: save/restore cursor, keypad modes, index, next line, tab
# set, reverse index, single shifts, reset. Not ESC Z (DECID: the terminal answers).
_ESCAPE_FINALS = frozenset("78=>DEHMNOc")
# ESC + intermediate + final: G0-G3 character sets, and line sizes and DECALN (ESC # n).
_CHARSET_INTERMEDIATES = frozenset("()*+-./")
_LINE_FINALS = frozenset("34568")
# What opens a control string, after ESC or as a C1 control: OSC, DCS, SOS, PM, APC.
_STRING_OPENERS = {"]": 0x9D, "P": 0x90, "X": 0x98, "^": 0x9E, "_": 0x9F}
_STRING_C1 = frozenset(_STRING_OPENERS.values())
_OSC = 0x9D
_ST = 0x9C
_CSI_C1 = 0x9B
# CSI finals passed with no private marker and no intermediate: insert/delete/erase, cursor
# moves, scrolling, tab stops, repeat, SGR, scrolling region, save/restore cursor, and the
# ANSI modes below. Left out, among others: n (DSR), c (DA), t (window operations and
# reports), x (DECREQTPARM), i (media copy), q (DECLL), and every other final.
_CSI_FINALS = frozenset("@ABCDEFGHIJKLMPSTXZ`abdefgmrsu")
_ANSI_MODES = frozenset({"4", "20"})  # insert, newline; not 2 (KAM: locks the keyboard)
# DEC private modes (CSI ? Pm h/l) passed: cursor keys, reverse video, origin, wrap, repeat,
# blinking and visible cursor, reverse wrap, alternate screens, mouse and focus reports,
# bracketed paste, synchronized output.
_DEC_MODES = frozenset(
    "1 5 6 7 8 12 25 45 47 1000 1002 1003 1004 1006 1015 1047 1048 1049 2004 2026".split()
)
_CSI_SHAPE = re.compile(r"(?P<marker>[<=>?]?)(?P<params>[0-9:;]*)(?P<inter>[ -/]*)")
# The longest CSI kept while its final byte is awaited; a longer one is dropped.
_CSI_MAX = 64
_STRING_END = re.compile("[\x07\x18\x1a\x1b\x9c\udc9c]")
# Turned off when the guest's terminal session ends: the modes that make the operator's
# terminal send mouse, focus and paste reports into whatever reads it next.
INPUT_MODES_OFF = b"\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1004l\x1b[?1006l\x1b[?1015l\x1b[?2004l"


def _csi_allowed(body: str, final: str) -> bool:
    shape = _CSI_SHAPE.fullmatch(body)
    if shape is None:
        return False
    marker, params, inter = shape["marker"], shape["params"], shape["inter"]
    if inter:
        return not marker and (inter, final) in {(" ", "q"), ("!", "p")}  # cursor shape, soft reset
    if marker == "?":
        if final in "JK":
            return True  # selective erase
        return final in "hl" and bool(params) and all(p in _DEC_MODES for p in params.split(";"))
    if marker:
        return False
    if final in "hl":
        return bool(params) and all(p in _ANSI_MODES for p in params.split(";"))
    return final in _CSI_FINALS


class TerminalFilter:
    """An allow-list of control sequences, for a guest's interactive terminal (see above)."""

    def __init__(self) -> None:
        self._utf8 = _Utf8()
        self._state = _GROUND
        self._body = ""  # intermediates of an escape sequence, or a CSI's parameters so far
        self._osc = False  # the open string is an OSC (BEL ends it too)

    def feed(self, data: bytes, final: bool = False) -> bytes:
        text = self._utf8.decode(data, final)
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            if self._state == _GROUND:
                found = _CONTROL.search(text, i)
                if found is None:
                    out.append(text[i:])
                    break
                out.append(text[i:found.start()])
                i = found.start()
            elif self._state == _STRING:
                found = _STRING_END.search(text, i)
                if found is None:
                    break  # all of it is the string's: dropped
                i = found.start()
            if self._step(text[i], out):
                i += 1
        if final:
            self._state, self._body = _GROUND, ""
        return self._utf8.encode("".join(out))

    def _step(self, ch: str, out: list[str]) -> bool:
        """Take CH in the current state; False if CH must be taken again in the new state."""
        state = self._state
        if state == _GROUND:
            self._control(ch, out)
            return True
        if state in (_STRING, _STRING_ESCAPE):
            return self._in_string(ch)
        if ch in _CANCEL:
            self._state = _GROUND
            return True
        code = ord(ch)
        if code < 0x20 or code > 0x7E:
            # A control (or anything but ASCII) inside a sequence: the sequence is dropped
            # and CH taken as if it came first (ESC starts a new one).
            self._state = _GROUND
            return False
        if state == _ESCAPE:
            self._escape(ch, out)
        elif state == _ESCAPE_INTERMEDIATE:
            if code < 0x30:
                self._body += ch
            else:
                if self._escape_allowed(self._body, ch):
                    out.append(_ESC + self._body + ch)
                self._state = _GROUND
        else:  # _CSI
            if code < 0x40:
                self._body += ch
                if len(self._body) > _CSI_MAX:
                    self._body = "\x00"  # cannot match: the sequence is dropped at its end
            else:
                if _csi_allowed(self._body, ch):
                    out.append(_ESC + "[" + self._body + ch)
                self._state = _GROUND
        return True

    def _control(self, ch: str, out: list[str]) -> None:
        if ch == _ESC:
            self._state, self._body = _ESCAPE, ""
            return
        c1 = _c1(ch)
        if c1 == _CSI_C1:
            self._state, self._body = _CSI, ""
        elif c1 in _STRING_C1:
            self._state, self._osc = _STRING, c1 == _OSC
        elif ch in _PASSED_C0:
            out.append(ch)
        # Any other control is dropped.

    def _escape(self, ch: str, out: list[str]) -> None:
        if ch == "[":
            self._state, self._body = _CSI, ""
        elif ch in _STRING_OPENERS:
            self._state, self._osc = _STRING, ch == "]"
        elif ord(ch) < 0x30:
            self._state, self._body = _ESCAPE_INTERMEDIATE, ch
        else:
            if ch in _ESCAPE_FINALS:
                out.append(_ESC + ch)
            self._state = _GROUND

    @staticmethod
    def _escape_allowed(intermediates: str, final: str) -> bool:
        if len(intermediates) != 1:
            return False
        if intermediates in _CHARSET_INTERMEDIATES:
            return True
        return intermediates == "#" and final in _LINE_FINALS

    def _in_string(self, ch: str) -> bool:
        """Inside an OSC, DCS, SOS, PM or APC string: everything is dropped up to its end
        (ST, which is ESC \\ or the C1 control; BEL too for an OSC; CAN or SUB cancel)."""
        if self._state == _STRING_ESCAPE:
            if ch == "\\":
                self._state = _GROUND
                return True
            self._state, self._body = _ESCAPE, ""  # ESC began a new sequence
            return False
        if ch == _ESC:
            self._state = _STRING_ESCAPE
        elif ch in _CANCEL or _c1(ch) == _ST or (ch == "\x07" and self._osc):
            self._state = _GROUND
        return True
