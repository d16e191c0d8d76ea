"""The spans this project makes itself (each request's SERVER span, the order service's CLIENT span),
recorded into plain fields and handed to the SDK's span processor when they end.

Why not the SDK's own span: under the gevent worker the SDK's span took 51 µs from start to end for a
GET's server span (13 attributes, measured): four locks made for every span (gevent's, about 1 µs
each to make), a lock taken per attribute while the value is cleaned, a ReadableSpan copied out at the
end. That was most of what exporting every span cost a request. A request's span is written only by
the code serving that request, so this one records into a few slots and takes no lock; its
attributes are a plain dict for as long as that holds exactly what the SDK's span would (valid keys,
values of the kinds the SDK keeps as they are, no more than the limit, no length limit set), and the
SDK's own ``BoundedAttributes`` from the first set that needs cleaning, dropping or cutting.

Everything else stays the SDK's: the provider's sampler, id generator, resource and span limits
decide and describe each span the way its own tracer does, the finished span is the SDK's
``ReadableSpan``, and it goes to the SDK's batch processor and exporter. A span another tracer starts
inside a request (an instrumentation library's) is the SDK's own, a child of this one as usual.

Left out, as the SDK's tracer has them: its experimental per-tracer enabling and its self-metrics
(``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``), and ``on_start``/``_on_ending`` calls, which the batch
processor does nothing with.
"""

import logging
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util import types
from opentelemetry.util._decorator import _agnosticcontextmanager

_logger = logging.getLogger(__name__)

# What the SDK keeps exactly as given (opentelemetry.attributes cleans anything else: sequences to tuples,
# mappings copied, other kinds to str), with no maximum length set for strings.
_PLAIN_VALUES = frozenset((str, bool, int, float, bytes, type(None)))
_UNSET = Status(StatusCode.UNSET)
_EXCEPTION_ESCAPED = "exception.escaped"  # the SDK's key; deprecated in the conventions, still written


def _plain(item: tuple[Any, Any]) -> bool:
    """A valid key with a value the SDK would keep as it is."""
    key, value = item
    return key.__class__ is str and bool(key) and value.__class__ in _PLAIN_VALUES


class SpanRecorder(trace.Tracer):
    """A tracer whose recording spans are ``RecordedSpan``; sampling, ids, resource and limits are
    ``provider``'s, finished spans go to ``processor`` (the one added to ``provider``)."""

    def __init__(self, provider: TracerProvider, processor: SpanProcessor, limits: SpanLimits, name: str) -> None:
        self.sampler = provider.sampler
        self.id_generator = provider.id_generator
        self.resource = provider.resource
        self.processor = processor
        self.limits = limits
        self.scope = InstrumentationScope(name, "", "")  # what provider.get_tracer(name) gives its spans
        # Below this many attributes, with no length to cut strings to, a plain dict holds what the
        # SDK's BoundedAttributes would; at it, the oldest must go, so BoundedAttributes takes over.
        self.room = sys.maxsize if limits.max_span_attributes is None else limits.max_span_attributes
        self.plain = limits.max_span_attribute_length is None

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        """What the SDK's ``Tracer.start_span`` decides, the same way: the parent from ``context``, a
        new trace id for a root span, the sampler's decision, flags and trace state."""
        links = links or ()
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self.id_generator.generate_trace_id()
            random_trace_id = self.id_generator.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random_trace_id = parent.trace_flags.random_trace_id
        sampling = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
        flags = TraceFlags.SAMPLED if sampling.decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT
        if random_trace_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        span_context = SpanContext(
            trace_id,
            self.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=sampling.trace_state,
        )
        if sampling.decision is Decision.DROP:
            return NonRecordingSpan(span_context)
        span = RecordedSpan(
            self,
            name,
            span_context,
            parent,
            kind,
            self.initial_attributes(sampling.attributes),
            start_time,
            record_exception_on_exit=record_exception,
            set_status_on_exit=set_status_on_exception,
        )
        for link in links:
            span.add_link(link.context, link.attributes)
        return span

    @_agnosticcontextmanager  # the API's own: what its Tracer declares (usable in async code too)
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current

    def finish(self, span: "RecordedSpan") -> None:
        """Hand ``span``, ended, to the processor as the SDK's ReadableSpan."""
        self.processor.on_end(
            ReadableSpan(
                name=span.name,
                context=span.context,
                parent=span.parent,
                resource=self.resource,
                attributes=span.attributes,
                events=span.events,
                links=span.links,
                kind=span.kind,
                status=span.status,
                start_time=span.start_time,
                end_time=span.end_time,
                instrumentation_scope=self.scope,
            )
        )

    def initial_attributes(self, given: types.Attributes) -> dict[str, Any] | BoundedAttributes:
        """A new span's attributes: a dict while it holds exactly what the SDK's span would."""
        given = given or {}
        if self.plain and len(given) <= self.room and all(map(_plain, given.items())):
            return dict(given)
        return self.bounded_attributes(given)

    def bounded_attributes(self, given: Mapping[str, Any]) -> BoundedAttributes:
        """The SDK span's own attributes, from here on: cleaned, limited, the oldest dropped."""
        limits = self.limits
        return BoundedAttributes(
            limits.max_span_attributes, given, immutable=False, max_value_len=limits.max_span_attribute_length
        )

    def bounded(self, limit: int | None, attributes: types.Attributes) -> BoundedAttributes:
        """An event's or link's attributes, as the SDK's span bounds them."""
        return BoundedAttributes(limit, attributes, immutable=True, max_value_len=self.limits.max_attribute_length)


class RecordedSpan(trace.Span):
    """A recording span written by one request's code: no locks. Once ended it records nothing more
    (a warning for each late call, as the SDK's span logs)."""

    __slots__ = (
        "attributes",
        "context",
        "end_time",
        "events",
        "kind",
        "links",
        "name",
        "parent",
        "record_exception_on_exit",
        "recorder",
        "set_status_on_exit",
        "start_time",
        "status",
    )

    def __init__(
        self,
        recorder: SpanRecorder,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any] | BoundedAttributes,
        start_time: int | None = None,
        *,
        record_exception_on_exit: bool = True,
        set_status_on_exit: bool = True,
    ) -> None:
        self.recorder = recorder
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.attributes: dict[str, Any] | BoundedAttributes = attributes
        self.events: Sequence[Event] = ()  # a BoundedList from the first one: most spans have none
        self.links: Sequence[Link] = ()
        self.status = _UNSET
        self.start_time = start_time if start_time is not None else time_ns()
        self.end_time: int | None = None
        self.record_exception_on_exit = record_exception_on_exit
        self.set_status_on_exit = set_status_on_exit

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self.name}", context={self.context})'

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def _ended(self, call: str) -> bool:
        if self.end_time is None:
            return False
        _logger.warning("Tried calling %s on an ended span.", call)
        return True

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """As the SDK's span sets them (keys are str, as the API types them)."""
        if self._ended("set_attributes"):
            return
        held = self.attributes
        if (
            held.__class__ is dict
            and len(held) + len(attributes) <= self.recorder.room
            and held.keys().isdisjoint(attributes)
            and all(map(_plain, attributes.items()))
        ):
            held.update(attributes)  # a request's span: new keys, plain values
        else:
            for key, value in attributes.items():
                self.set_attribute(key, value)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._ended("set_attribute"):
            return
        held = self.attributes
        if held.__class__ is dict:
            if (
                key.__class__ is str
                and key
                and value.__class__ in _PLAIN_VALUES
                and (key in held or len(held) < self.recorder.room)
            ):
                held.pop(key, None)  # set again, a key moves to the end, as in BoundedAttributes
                held[key] = value
                return
            held = self.attributes = self.recorder.bounded_attributes(held)
        held[key] = value

    def update_name(self, name: str) -> None:
        if not self._ended("update_name"):
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK's span: UNSET is ignored, and so is anything once the status is OK."""
        if self._ended("set_status") or self.status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                _logger.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`", description
                )
            self.status = status
        elif status is not StatusCode.UNSET:
            self.status = Status(status, description)

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self._ended("add_event"):
            return
        limits = self.recorder.limits
        if not isinstance(self.events, BoundedList):
            self.events = BoundedList(limits.max_events)
        self.events.append(Event(name, self.recorder.bounded(limits.max_event_attributes, attributes), timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if not (context and (context.is_valid or attributes or context.trace_state)) or self._ended("add_link"):
            return
        limits = self.recorder.limits
        if not isinstance(self.links, BoundedList):
            self.links = BoundedList(limits.max_links)
        self.links.append(Link(context, self.recorder.bounded(limits.max_link_attributes, attributes)))

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """An ``exception`` event with the attributes the SDK's span gives it."""
        kind = type(exception)
        module = kind.__module__
        described: dict[str, types.AnyValue] = {
            EXCEPTION_TYPE: f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__,
            EXCEPTION_MESSAGE: str(exception),
            EXCEPTION_STACKTRACE: "".join(traceback.format_exception(exception)),
            _EXCEPTION_ESCAPED: str(escaped),
        }
        if attributes:
            described.update(attributes)
        self.add_event("exception", described, timestamp)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace_back: Any) -> None:
        """``with span:`` as with the SDK's span: an exception in the block is recorded (as escaped) and
        makes the span an error, as ``start_span`` was asked, and the span ends."""
        if error is not None and self.end_time is None:
            if self.record_exception_on_exit:
                self.record_exception(error, escaped=True)
            if self.set_status_on_exit:
                self.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self.end()

    def end(self, end_time: int | None = None) -> None:
        if self._ended("end"):
            return
        self.end_time = end_time if end_time is not None else time_ns()
        self.recorder.finish(self)
