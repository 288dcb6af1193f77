"""How the ticket stream drifts away from what an older expert learned: data for the corpus.

Owns the `Drift` description the corpus generator (`loadgen.corpus.generate`) applies and
the drifted vocabulary itself: a product the older tickets never mention (a zero-trust
network client rolled out to replace the VPN client, whose tickets read like software and
sign-in problems but belong to the network queue), and a moved responsibility (an older
desk filed cloud and pipeline tickets under the servers queue; the platform team now owns
them as `cloud_devops`). Pure data and one small dataclass: no randomness, no I/O; the
generator draws from it with its own seeded RNG, and without a `Drift` nothing here is used.
"""

from __future__ import annotations

from dataclasses import dataclass

# The queue the new product's tickets belong to.
NEW_PRODUCT_QUEUE = "network_vpn"
NEW_PRODUCT_NAME = "Zscaler"

# (subjects, bodies) intents, filled with the corpus's slots ({app}, {device}, ...).
NEW_PRODUCT_INTENTS: list[tuple[list[str], list[str]]] = [
    (
        [
            "Zscaler not working",
            "ZCC stuck on connecting",
            "Zscaler client update failed",
            "ZPA app segment unreachable",
            "Zscaler posture check failed",
            "Zscaler keeps asking me to sign in",
            "Zscaler Client Connector error",
        ],
        [
            "Zscaler Client Connector is stuck on 'connecting' {time} and {app} will not load.",
            "Since the Zscaler update my {device} says the posture check failed, so ZPA blocks me.",
            "ZCC shows 'captive portal detected' at {site} and nothing internal opens.",
            "The Zscaler app keeps asking me to sign in again every few minutes.",
            "Private access to {server} through ZPA times out, the app segment is unreachable.",
            "The Zscaler tunnel drops whenever I open {desktop_app}, error {error}.",
            "I cannot reach {share} since Zscaler replaced the old client on my {device}.",
        ],
    ),
    (
        [
            "Zscaler enrolment",
            "install Zscaler on new laptop",
            "Zscaler bypass request",
            "ZCC device not registered",
        ],
        [
            "Please enrol my {device} in Zscaler, the Client Connector says device not registered.",
            "Need Zscaler Client Connector installed on the new {device} for {person} {surname}.",
            "Can we get a Zscaler bypass for the vendor portal? The upload breaks behind ZPA.",
            "ZCC says my {device} is not trusted, so I have no access to {app} from {site}.",
        ],
    ),
]

# An older desk's filing: the platform team did not exist, its tickets went to servers.
OLD_DESK_RELABEL: tuple[tuple[str, str], ...] = (("cloud_devops", "servers_storage"),)


@dataclass(frozen=True, slots=True)
class Drift:
    """How generated tickets differ from the default corpus.

    Attributes:
        new_product: share of tickets about the new product (`NEW_PRODUCT_INTENTS`),
            labeled `NEW_PRODUCT_QUEUE`.
        relabel: (queue, label) pairs: tickets of `queue` are labeled `label`, as a desk
            with an older split of responsibilities filed them.
    """

    new_product: float = 0.0
    relabel: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.new_product <= 1.0:
            raise ValueError("new_product must be a share in [0, 1]")

    def label(self, queue: str) -> str:
        """The label a ticket of `queue` gets under this drift."""
        return dict(self.relabel).get(queue, queue)


# The named drifts `ticket-router loadgen corpus --drift` offers.
OLD_DESK = Drift(relabel=OLD_DESK_RELABEL)
NEW_PRODUCT = Drift(new_product=0.25)
DRIFTS: dict[str, Drift] = {"old-desk": OLD_DESK, "new-product": NEW_PRODUCT}
