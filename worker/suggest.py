"""What a published record tells the human beside the decision: the expert's best guesses
(top queues with probabilities) on every answered ticket, and on triage records the similar
past tickets the expert's index found (`expert.similar`, computed by the engine).

Pure: the pipeline calls it once per answered ticket; `route` shows the same lists.
"""

from __future__ import annotations

from expert.serving import Prediction
from schemas.routing import Disposition, RoutingDecision

SUGGESTED_QUEUES = 3


def with_help(
    decision: RoutingDecision, prediction: Prediction, *, disposition: Disposition
) -> RoutingDecision:
    """`decision` with the top queues, and the similar tickets when it goes to triage."""
    similar = prediction.similar if disposition is Disposition.TRIAGE else ()
    return decision.model_copy(
        update={"suggestions": prediction.top(SUGGESTED_QUEUES), "similar_tickets": similar}
    )
