"""The labeled synthetic corpus: seeded, deterministic, realistic-looking IT tickets.

Owns generating `LabeledTicket`s (a `Ticket`, its queue and its priority) and writing them
as JSONL for `ticket-router expert build`. Same `seed` and `n` -> byte-identical output.
It does no network I/O and never reads the environment.

Realism knobs, all seeded: many phrasings per intent, typos, abbreviations, greetings,
signatures and quoted replies, multi-symptom tickets (labeled by the main symptom), vague
tickets, words that belong to other queues, a few German/French/Spanish tickets and a small
share of plausible misroutes (labels real help desks would also get "wrong").
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel, ConfigDict

from loadgen.corpus_drift import NEW_PRODUCT_INTENTS, NEW_PRODUCT_QUEUE, Drift
from schemas.ticket import Priority, SourceSystem, Ticket

_EPOCH = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)

# Slot fillers shared by all intents.
_SLOTS: dict[str, list[str]] = {
    "app": [
        "SAP",
        "Salesforce",
        "Workday",
        "Concur",
        "ServiceNow",
        "Oracle EBS",
        "Jira",
        "Confluence",
        "Tableau",
        "the HR portal",
        "the expense tool",
        "Coupa",
    ],
    "desktop_app": [
        "Excel",
        "Word",
        "Adobe Reader",
        "Chrome",
        "Firefox",
        "Zoom",
        "Visio",
        "AutoCAD",
        "Python",
        "Notepad++",
        "7-Zip",
        "Power BI Desktop",
        "Acrobat Pro",
    ],
    "device": [
        "laptop",
        "ThinkPad",
        "MacBook",
        "desktop",
        "docking station",
        "monitor",
        "keyboard",
        "mouse",
        "headset",
        "webcam",
        "printer",
        "scanner",
        "desk phone",
    ],
    "printer": [
        "PRN-3F-01",
        "the 2nd floor printer",
        "HP LaserJet in room 214",
        "the Ricoh by reception",
        "the plotter",
    ],
    "site": [
        "Berlin office",
        "London HQ",
        "Madrid",
        "the Lyon plant",
        "home",
        "the warehouse",
        "building B",
        "the Austin site",
    ],
    "share": [
        r"\\fs01\finance",
        r"\\fs02\projects",
        "the Marketing SharePoint site",
        "the HR shared drive",
        "S: drive",
        "the Legal Teams channel",
        "the engineering wiki",
    ],
    "group": [
        "Finance-ReadOnly",
        "GRP-Sales-EMEA",
        "VPN-Users",
        "Developers",
        "Payroll-Admins",
        "Tableau-Creators",
        "BI-Readers",
    ],
    "db": [
        "ORAPRD01",
        "the CRM database",
        "sqlprod-03",
        "Postgres cluster pg-main",
        "the data warehouse",
        "MySQL reporting replica",
        "DB2 on the mainframe",
    ],
    "server": [
        "srv-app-12",
        "web-prod-04",
        "the file server",
        "esx-host-7",
        "vm-batch-02",
        "the print server",
        "dc01",
    ],
    "cloud": ["AWS", "Azure", "GCP", "our EKS cluster", "the AKS cluster", "Terraform Cloud"],
    "pipeline": ["Jenkins", "GitLab CI", "GitHub Actions", "Azure DevOps", "ArgoCD"],
    "mail_thing": [
        "Outlook",
        "OWA",
        "the shared mailbox",
        "my calendar",
        "Teams",
        "Skype",
        "the distribution list",
    ],
    "person": [
        "Anna",
        "Ben",
        "Carlos",
        "Dana",
        "Erik",
        "Fatima",
        "Grace",
        "Hiro",
        "Ines",
        "Jonas",
        "Kofi",
        "Laura",
        "Mehmet",
        "Nina",
        "Omar",
        "Priya",
    ],
    "surname": [
        "Schmidt",
        "Miller",
        "Garcia",
        "Dubois",
        "Rossi",
        "Kowalski",
        "Nguyen",
        "Okafor",
        "Lindqvist",
        "Patel",
        "Moreau",
        "Fischer",
    ],
    "time": [
        "since this morning",
        "since yesterday",
        "since the update",
        "for 2 days",
        "since Monday",
        "after the reboot",
        "intermittently all week",
        "right now",
    ],
    "num": [str(i) for i in range(100, 1000, 7)],
    "error": [
        "0x80070005",
        "error 503",
        "ORA-12541",
        "ERR_CONNECTION_TIMED_OUT",
        "java.lang.NullPointerException",
        "code 809",
        "HTTP 401",
        "error 1603",
    ],
}

# queue -> (base priorities to draw from, intents); an intent is (subjects, bodies).
Intent = tuple[list[str], list[str]]
_QUEUES: dict[str, tuple[list[str], list[Intent]]] = {
    "password_account": (
        ["P3", "P3", "P2", "P4"],
        [
            (
                [
                    "password reset",
                    "forgot my password",
                    "pwd expired",
                    "need password reset for {app}",
                    "cannot login - password",
                ],
                [
                    "I forgot my password and can't log in to my {device}.",
                    "My password expired {time} and the reset page says it breaks the policy",
                    "please reset my pwd, I'm locked out of windows",
                    "The self service password reset keeps failing with {error}.",
                ],
            ),
            (
                ["account locked", "AD account locked out", "locked out again", "user locked"],
                [
                    "My AD account is locked {time}, I tried my password too many times.",
                    "account keeps getting locked every hour, probably an old password on my phone",
                    "I am locked out of my account and cannot work.",
                ],
            ),
            (
                [
                    "MFA not working",
                    "new phone - MFA",
                    "authenticator app issue",
                    "2FA code rejected",
                    "SSO login loop",
                ],
                [
                    "I got a new phone and the MFA app doesn't have my account anymore.",
                    "The MFA prompt never arrives {time}, so I can't sign in to {app}.",
                    "SSO keeps redirecting me back to the login page when I open {app}.",
                    "Authenticator codes are rejected as invalid.",
                ],
            ),
            (
                ["cannot sign in", "login issue", "unable to log on", "username not recognised"],
                [
                    "When I sign in to {app} it says username or password wrong, but it is right.",
                    "login fails on my {device}: 'trust relationship with the domain failed'",
                    "can't log on {time}, it says my account is disabled",
                ],
            ),
        ],
    ),
    "access_request": (
        ["P4", "P4", "P3", "P5"],
        [
            (
                [
                    "access request: {share}",
                    "need access to {share}",
                    "permission to {share}",
                    "please grant access",
                ],
                [
                    "Please give me read/write access to {share}, my manager {person} approved it.",
                    "I need access to {share} for the new project starting next week.",
                    "Can you add me to the group that has access to {share}? I get access denied.",
                ],
            ),
            (
                ["add to group {group}", "AD group membership", "group membership request"],
                [
                    "Please add me to the AD group {group}.",
                    "New joiner {person} {surname} needs to be added to {group} and the inbox.",
                    "Request to add user to {group}, approved by line manager.",
                ],
            ),
            (
                [
                    "licence request for {desktop_app}",
                    "need a {app} licence",
                    "new user account for {person} {surname}",
                    "role request in {app}",
                ],
                [
                    "We need a licence for {desktop_app} for {person} in the design team.",
                    "Please create an account in {app} for our new starter {person} {surname}.",
                    "I need the approver role in {app} to sign off purchase orders.",
                    "requesting admin rights on my {device} to install dev tools",
                ],
            ),
        ],
    ),
    "hardware": (
        ["P3", "P4", "P3", "P2"],
        [
            (
                [
                    "{device} broken",
                    "{device} not working",
                    "broken screen",
                    "laptop won't turn on",
                    "replace {device}",
                ],
                [
                    "My {device} does not turn on {time}, the power light blinks orange.",
                    "The screen of my laptop is cracked after it fell off the desk.",
                    "my {device} is making a loud noise and gets very hot",
                    "The battery drains in 30 minutes, I need a replacement.",
                ],
            ),
            (
                [
                    "printer jam",
                    "printer offline",
                    "cannot print",
                    "{printer} not printing",
                    "toner empty",
                ],
                [
                    "{printer} shows paper jam but there is no paper stuck.",
                    "Printing to {printer} fails, the job stays in the queue forever.",
                    "Toner is empty on {printer}, please replace.",
                    "The printer at {site} prints blank pages.",
                ],
            ),
            (
                [
                    "docking station issue",
                    "second monitor not detected",
                    "headset not recognised",
                    "keyboard keys stuck",
                    "new mouse please",
                ],
                [
                    "My external monitor is not detected when I plug the laptop into the dock.",
                    "The headset is not recognised by the {device}, no sound in calls.",
                    "Several keys on the keyboard are stuck, need a new one.",
                    "The desk phone at {site} has no dial tone.",
                ],
            ),
        ],
    ),
    "software": (
        ["P4", "P3", "P4", "P3"],
        [
            (
                [
                    "install {desktop_app}",
                    "software install request",
                    "please install {desktop_app}",
                    "need {desktop_app} on my laptop",
                ],
                [
                    "Please install {desktop_app} on my laptop, it is not in the software center.",
                    "I need {desktop_app} installed for a customer project.",
                    "Software Center shows {desktop_app} but the install fails with {error}.",
                ],
            ),
            (
                [
                    "{desktop_app} crashes",
                    "{desktop_app} keeps crashing",
                    "{desktop_app} not responding",
                    "app freezes",
                ],
                [
                    "{desktop_app} crashes every time I open a file {time}.",
                    "{desktop_app} freezes and shows 'not responding' after the latest update.",
                    "When I start {desktop_app} it closes immediately without an error message.",
                ],
            ),
            (
                [
                    "update failed",
                    "{desktop_app} licence expired",
                    "activation error",
                    "windows update stuck",
                ],
                [
                    "{desktop_app} says my licence has expired and asks for an activation key.",
                    "Windows update is stuck at 35% {time} and my {device} restarts in a loop.",
                    "The {desktop_app} update failed with {error}, now it won't start.",
                ],
            ),
        ],
    ),
    "email_collaboration": (
        ["P3", "P3", "P4", "P2"],
        [
            (
                [
                    "outlook not syncing",
                    "emails not arriving",
                    "cannot send email",
                    "Outlook issue",
                    "mailbox full",
                ],
                [
                    "Outlook is not receiving new emails {time}, OWA shows them.",
                    "I cannot send emails, they stay in the outbox.",
                    "My mailbox is full and I can't send anything, please increase the quota.",
                    "Outlook keeps asking for my password and then disconnects.",
                ],
            ),
            (
                [
                    "calendar issue",
                    "shared mailbox access",
                    "meeting invites missing",
                    "distribution list change",
                ],
                [
                    "Meeting invites from {person} do not show in my calendar.",
                    "I lost access to the shared mailbox after my role change.",
                    "Please add {person} {surname} to the distribution list for the sales team.",
                    "Out of office reply does not work in Outlook.",
                ],
            ),
            (
                [
                    "Teams not working",
                    "Skype meeting issue",
                    "SharePoint site error",
                    "Teams call drops",
                ],
                [
                    "Teams calls drop after a few minutes {time}.",
                    "I can't join Skype meetings, it hangs on connecting.",
                    "The SharePoint site gives an error when I upload documents.",
                    "Teams shows me as offline all the time and messages arrive late.",
                ],
            ),
        ],
    ),
    "network_vpn": (
        ["P3", "P2", "P3", "P2"],
        [
            (
                [
                    "VPN not connecting",
                    "cannot connect to VPN",
                    "VPN drops",
                    "vpn issue",
                    "GlobalProtect error",
                ],
                [
                    "VPN does not connect from {site}, it fails with {error}.",
                    "The VPN keeps disconnecting every 10 minutes when I work from home.",
                    "can not connect vpn {time}, the client says gateway not reachable",
                    "After connecting to VPN I cannot reach any internal sites.",
                ],
            ),
            (
                [
                    "wifi issue",
                    "no internet",
                    "WiFi keeps dropping",
                    "network slow",
                    "LAN port dead",
                ],
                [
                    "The Wi-Fi at {site} keeps dropping, the whole team is affected.",
                    "No internet on my {device} when plugged into the LAN port at my desk.",
                    "The network is extremely slow {time}, pages time out.",
                    "Guest WiFi password does not work in the meeting rooms.",
                ],
            ),
            (
                [
                    "DNS issue",
                    "proxy blocking site",
                    "firewall rule request",
                    "cannot reach server",
                ],
                [
                    "Internal hostnames do not resolve {time}, DNS looks broken.",
                    "The proxy blocks a vendor site we need: {error}.",
                    "Please open firewall port 443 from {server} to the partner network.",
                    "Cannot ping {server} from the {site} subnet.",
                ],
            ),
        ],
    ),
    "database": (
        ["P2", "P3", "P2", "P1"],
        [
            (
                ["database connection error", "cannot connect to {db}", "DB down", "{db} timeout"],
                [
                    "Our application cannot connect to {db}: {error}.",
                    "Connections to {db} time out {time}.",
                    "The {db} instance seems down, all reports fail.",
                ],
            ),
            (
                ["slow query", "report very slow", "deadlocks on {db}", "tablespace full"],
                [
                    "Queries on {db} are extremely slow {time}, a simple select takes minutes.",
                    "We see many deadlocks on {db} during the nightly batch.",
                    "Tablespace USERS on {db} is 98% full, please extend.",
                    "The month end report query runs for hours.",
                ],
            ),
            (
                ["restore request", "backup failed", "need db access", "schema change request"],
                [
                    "Please restore yesterday's backup of {db} to the test environment.",
                    "The nightly backup of {db} failed with {error}.",
                    "I need read access to the sales schema on {db} for reporting.",
                    "Please run the attached schema change script on {db} tonight.",
                ],
            ),
        ],
    ),
    "servers_storage": (
        ["P2", "P2", "P3", "P1"],
        [
            (
                ["server down", "{server} not responding", "{server} unreachable", "VM crashed"],
                [
                    "{server} is not responding {time}, the application on it is down.",
                    "The VM {server} crashed and does not boot.",
                    "Monitoring shows {server} unreachable, users cannot open the app.",
                ],
            ),
            (
                ["disk space alert", "disk full on {server}", "filesystem 95%", "storage quota"],
                [
                    "Alert: /var on {server} is 95% full.",
                    "event critical: hostname {server} mountpoint /data threshold exceeded",
                    "The file server is out of space, nobody can save to {share}.",
                    "Please increase the storage quota of the project volume.",
                ],
            ),
            (
                [
                    "high CPU on {server}",
                    "memory alert",
                    "patching request",
                    "certificate expiring",
                ],
                [
                    "CPU on {server} is at 100% {time}.",
                    "Memory alert on {server}, swap is full.",
                    "Please schedule OS patching for {server} this weekend.",
                    "The SSL certificate on {server} expires in 5 days.",
                ],
            ),
        ],
    ),
    "business_applications": (
        ["P3", "P3", "P2", "P4"],
        [
            (
                ["{app} error", "error in {app}", "{app} not working", "issue with {app}"],
                [
                    "When I post an invoice in {app} I get {error}.",
                    "{app} shows an error when I try to approve the purchase order.",
                    "{app} is very slow {time} and times out on saving.",
                ],
            ),
            (
                [
                    "wrong data in {app}",
                    "report incorrect",
                    "sales order stuck",
                    "payroll data issue",
                ],
                [
                    "The sales order is stuck in status 'in process' in {app}.",
                    "The headcount report in {app} shows wrong numbers for my department.",
                    "My expense report was rejected in {app} but I can't see why.",
                    "Vacation balance in {app} is incorrect.",
                ],
            ),
            (
                ["{app} workflow", "cannot approve in {app}", "master data change"],
                [
                    "The approval workflow in {app} does not send tasks to my manager.",
                    "Please update the vendor master data in {app}: new bank details attached.",
                    "I cannot see the approve button in {app} for my team's timesheets.",
                ],
            ),
        ],
    ),
    "security_incident": (
        ["P2", "P1", "P2", "P1"],
        [
            (
                [
                    "phishing email",
                    "suspicious email",
                    "phishing?",
                    "fake invoice email",
                    "reported phishing",
                ],
                [
                    "I received a suspicious email asking me to confirm my password on a site.",
                    "I clicked a link in a mail that seemed to be from {person}, now I am worried.",
                    "Got an invoice attachment from an unknown sender, looks like phishing.",
                ],
            ),
            (
                ["virus alert", "malware detected", "antivirus popup", "ransomware?"],
                [
                    "The antivirus says it found malware on my {device} and quarantined a file.",
                    "Strange popups and my files have a weird extension now, is it ransomware?",
                    "Defender alert: trojan detected in the downloads folder.",
                ],
            ),
            (
                ["account compromised", "suspicious login", "data leak", "lost laptop"],
                [
                    "I got an MFA prompt I did not request, someone may have my password.",
                    "There are sign-ins to my account from another country.",
                    "I lost my laptop on the train, it has customer data on it.",
                    "A spreadsheet with salaries was shared publicly by mistake.",
                ],
            ),
        ],
    ),
    "cloud_devops": (
        ["P3", "P2", "P3", "P2"],
        [
            (
                ["pipeline failing", "{pipeline} build broken", "deploy failed", "CI job stuck"],
                [
                    "Our {pipeline} pipeline fails at the deploy step with {error}.",
                    "Builds in {pipeline} are queued for hours, no runner picks them up.",
                    "The production deploy failed halfway, please help roll back.",
                ],
            ),
            (
                [
                    "{cloud} access",
                    "kubernetes pods crashing",
                    "container image pull error",
                    "{cloud} quota",
                ],
                [
                    "Pods in {cloud} are in CrashLoopBackOff after the last release.",
                    "Image pull fails with {error} on the cluster.",
                    "We hit the vCPU quota in {cloud}, please raise it.",
                    "I need contributor access to the {cloud} subscription for the data team.",
                ],
            ),
            (
                ["terraform state lock", "helm release failed", "cloud cost spike"],
                [
                    "Terraform state is locked and nobody is running it.",
                    "helm upgrade failed and the release is now in pending state.",
                    "Our {cloud} bill tripled this week, something is scaling out of control.",
                ],
            ),
        ],
    ),
    "facilities_other": (
        ["P4", "P5", "P4", "P5"],
        [
            (
                [
                    "office too cold",
                    "light broken",
                    "desk booking",
                    "parking badge",
                    "coffee machine",
                ],
                [
                    "The air conditioning in the {site} meeting room is broken, it's freezing.",
                    "Light above my desk is flickering.",
                    "My badge does not open the parking garage at {site}.",
                    "The coffee machine on the 3rd floor is broken again.",
                ],
            ),
            (
                ["question", "general enquiry", "HR question", "where do I", "information needed"],
                [
                    "Who do I ask about my payslip?",
                    "Where can I find the travel policy?",
                    "I would like to order business cards.",
                    "How do I book a meeting room for 20 people at {site}?",
                ],
            ),
        ],
    ),
}

# A few tickets per queue in German, French and Spanish (subject, body).
_FOREIGN: dict[str, list[tuple[str, str]]] = {
    "password_account": [
        ("Passwort zurücksetzen", "Ich habe mein Passwort vergessen und bin gesperrt."),
        ("mot de passe expiré", "Mon mot de passe a expiré, je ne peux plus me connecter."),
        ("contraseña bloqueada", "Mi cuenta está bloqueada, necesito restablecer la contraseña."),
    ],
    "access_request": [
        ("Zugriff auf Laufwerk", "Bitte Zugriff auf {share} für mich freischalten."),
        ("demande d'accès", "Merci de m'ajouter au groupe {group}."),
        ("solicitud de acceso", "Necesito acceso a {share} para el proyecto."),
    ],
    "hardware": [
        ("Drucker defekt", "Der Drucker {printer} druckt nicht mehr."),
        ("écran cassé", "L'écran de mon ordinateur portable est cassé."),
        ("portátil no enciende", "Mi portátil no enciende desde ayer."),
    ],
    "software": [
        ("Installation {desktop_app}", "Bitte {desktop_app} auf meinem Laptop installieren."),
        ("{desktop_app} plante", "{desktop_app} plante à chaque ouverture."),
        ("instalar {desktop_app}", "Necesito instalar {desktop_app} en mi equipo."),
    ],
    "email_collaboration": [
        ("Outlook Problem", "Outlook empfängt keine E-Mails mehr."),
        ("Teams ne marche pas", "Je ne peux pas rejoindre les réunions Teams."),
        ("correo no llega", "No recibo correos en Outlook desde esta mañana."),
    ],
    "network_vpn": [
        ("VPN Verbindung", "Das VPN verbindet sich nicht von zu Hause."),
        ("pas de wifi", "Le Wi-Fi ne fonctionne pas au bureau de Lyon."),
        ("VPN no conecta", "La VPN se desconecta constantemente."),
    ],
    "database": [
        ("Datenbank langsam", "Abfragen auf {db} sind sehr langsam."),
        ("base de données", "Impossible de se connecter à {db}: {error}."),
        ("base de datos caída", "La base de datos {db} no responde."),
    ],
    "servers_storage": [
        ("Server ausgefallen", "{server} antwortet nicht mehr."),
        ("disque plein", "Le disque de {server} est plein à 95%."),
        ("servidor caído", "El servidor {server} no responde."),
    ],
    "business_applications": [
        ("Fehler in {app}", "Beim Buchen in {app} kommt {error}."),
        ("erreur {app}", "{app} affiche une erreur à la validation."),
        ("error en {app}", "No puedo aprobar el pedido en {app}."),
    ],
    "security_incident": [
        ("Phishing Mail", "Ich habe eine verdächtige E-Mail bekommen und auf den Link geklickt."),
        ("virus détecté", "L'antivirus a détecté un virus sur mon PC."),
        ("correo sospechoso", "Recibí un correo sospechoso pidiendo mi contraseña."),
    ],
    "cloud_devops": [
        ("Pipeline fehlgeschlagen", "Die {pipeline} Pipeline schlägt beim Deploy fehl."),
        ("déploiement échoué", "Le déploiement sur {cloud} a échoué."),
        ("pods fallando", "Los pods en {cloud} se reinician en bucle."),
    ],
    "facilities_other": [
        ("Heizung kaputt", "Im Büro ist es sehr kalt, die Heizung geht nicht."),
        ("badge parking", "Mon badge n'ouvre pas le parking."),
        ("pregunta general", "¿Dónde encuentro la política de viajes?"),
    ],
}

_VAGUE = [
    ("help", "it's not working again, please call me"),
    ("urgent!!", "nothing works, can someone look asap"),
    ("issue", "same problem as last week"),
    ("problem", "see subject"),
    ("not working", "the system is down for me"),
    ("error message", "I get an error, screenshot attached"),
    ("follow up", "any update on my previous ticket?"),
]

_GREETINGS = ["Hi,", "Hello team,", "Hi IT,", "Dear support,", "Hallo,", "hi", "Good morning,", ""]
_CLOSINGS = ["Thanks", "Thank you!", "Regards", "Best regards", "thx", "BR", "Cheers", ""]
_SIGNATURE = [
    "{person} {surname}\nSenior Analyst | Finance\nPhone: +49 30 1234 {num}",
    "{person} {surname} | Sales EMEA | m: +44 7700 900{num}",
    "--\n{person}\nSent from my iPhone",
    "{person} {surname}\nThis e-mail may contain confidential information. If you are not the "
    "intended recipient, please notify the sender and delete it.",
]
_URGENT = [
    "URGENT",
    "asap",
    "blocking my work",
    "whole team affected",
    "customer demo in 1 hour",
    "production is down",
]
_ABBREV = {
    "password": "pwd",
    "account": "acct",
    "please": "pls",
    "because": "bc",
    "laptop": "lap top",
    "cannot": "can't",
    "Active Directory": "AD",
    "with": "w/",
    "connection": "conn",
    "application": "app",
    "message": "msg",
    "thanks": "thx",
}


class LabeledTicket(BaseModel):
    """A generated ticket with the queue and priority it should get.

    Attributes:
        ticket: the canonical ticket.
        queue: the taxonomy queue name.
        priority: P1..P5.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ticket: Ticket
    queue: str
    priority: str

    def to_record(self) -> dict[str, object]:
        """The JSONL record: text (what the router classifies), label, priority, ticket."""
        return {
            "text": self.ticket.text(),
            "label": self.queue,
            "priority": self.priority,
            "ticket": self.ticket.model_dump(mode="json"),
        }


@dataclass(frozen=True, slots=True)
class CorpusMix:
    """Shares of the special kinds of ticket (the rest are plain single-intent tickets)."""

    multi_symptom: float = 0.12
    vague: float = 0.03
    foreign: float = 0.04
    quoted_reply: float = 0.10
    signature: float = 0.35
    typos: float = 0.25
    misroute: float = 0.02


QUEUES: tuple[str, ...] = tuple(_QUEUES)


def _fill(template: str, rng: random.Random) -> str:
    out = template
    for key, values in _SLOTS.items():
        slot = "{" + key + "}"
        while slot in out:
            out = out.replace(slot, rng.choice(values), 1)
    return out


def _typos(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for i, word in enumerate(words):
        roll = rng.random()
        if roll < 0.06 and len(word) > 3:
            j = rng.randrange(len(word) - 1)
            words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
        elif roll < 0.09 and len(word) > 4:
            j = rng.randrange(len(word))
            words[i] = word[:j] + word[j + 1 :]
        elif roll < 0.20:
            words[i] = _ABBREV.get(word, word)
    text = " ".join(words)
    return text.lower() if rng.random() < 0.3 else text


def _symptom(queue: str, rng: random.Random) -> tuple[str, str]:
    subjects, bodies = rng.choice(_QUEUES[queue][1])
    return _fill(rng.choice(subjects), rng), _fill(rng.choice(bodies), rng)


def _priority(queue: str, body: str, rng: random.Random) -> str:
    level = int(rng.choice(_QUEUES[queue][0])[1])
    if any(u.lower() in body.lower() for u in _URGENT):
        level = max(1, level - 1)
    return f"P{level}"


def _compose(queue: str, rng: random.Random, mix: CorpusMix) -> tuple[str, str]:
    roll = rng.random()
    if roll < mix.foreign:
        subject, body = rng.choice(_FOREIGN[queue])
        return _fill(subject, rng), _fill(body, rng)
    subject, body = _symptom(queue, rng)
    if rng.random() < 0.5:
        _, extra = _symptom(queue, rng)
        body = f"{body} {extra}"
    if rng.random() < mix.multi_symptom:
        other = rng.choice([q for q in QUEUES if q != queue])
        _, extra = _symptom(other, rng)
        lead = rng.choice(["Also, ", "Not sure if related: ", "PS: ", "Btw ", ""])
        # The main symptom comes first; the side remark names another queue's problem.
        body = f"{body} {lead}{extra[0].lower()}{extra[1:]}" if lead else f"{body} {extra}"
    if rng.random() < 0.15:
        body = f"{body} {rng.choice(_URGENT)}."
    return subject, body


def _decorate(body: str, rng: random.Random, mix: CorpusMix) -> str:
    if rng.random() < mix.typos:
        body = _typos(body, rng)
    greeting, closing = rng.choice(_GREETINGS), rng.choice(_CLOSINGS)
    parts = [p for p in (greeting, body, closing) if p]
    text = "\n".join(parts)
    if rng.random() < mix.signature:
        text = f"{text}\n{_fill(rng.choice(_SIGNATURE), rng)}"
    if rng.random() < mix.quoted_reply:
        quoted = "\n".join("> " + line for line in _fill(rng.choice(_SIGNATURE), rng).split("\n"))
        text = (
            f"{text}\n\n-----Original Message-----\nFrom: Service Desk\n"
            f"> Your ticket has been received and will be handled shortly.\n{quoted}"
        )
    return text


def _new_product(rng: random.Random) -> tuple[str, str]:
    subjects, bodies = rng.choice(NEW_PRODUCT_INTENTS)
    subject, body = _fill(rng.choice(subjects), rng), _fill(rng.choice(bodies), rng)
    if rng.random() < 0.15:
        body = f"{body} {rng.choice(_URGENT)}."
    return subject, body


def _one(index: int, rng: random.Random, mix: CorpusMix, drift: Drift | None) -> LabeledTicket:
    queue = rng.choice(QUEUES)
    # Without a drift no extra number is drawn: the default corpus stays byte-identical.
    if drift is not None and drift.new_product > 0 and rng.random() < drift.new_product:
        queue = NEW_PRODUCT_QUEUE
        subject, body = _new_product(rng)
    elif rng.random() < mix.vague:
        subject, body = rng.choice(_VAGUE)
        hint_subject, _ = _symptom(queue, rng)
        subject = f"{subject} - {hint_subject}" if rng.random() < 0.5 else subject
    else:
        subject, body = _compose(queue, rng, mix)
    label = queue
    if rng.random() < mix.misroute:
        label = rng.choice(QUEUES)
    if drift is not None:
        label = drift.label(label)
    body = _decorate(body, rng, mix)
    priority = _priority(queue, f"{subject} {body}", rng)
    person = rng.choice(_SLOTS["person"]).lower()
    ticket = Ticket(
        id=f"INC{index + 1:07d}",
        source=rng.choice(
            [
                SourceSystem.SERVICENOW,
                SourceSystem.JIRA,
                SourceSystem.ZENDESK,
                SourceSystem.CANONICAL,
            ]
        ),
        created_at=_EPOCH + timedelta(minutes=index * 7 + rng.randrange(7)),
        subject=subject if rng.random() > 0.1 else subject.upper(),
        body=body,
        requester=f"{person}.{rng.choice(_SLOTS['surname']).lower()}@example.com",
        priority=Priority(priority),
    )
    return LabeledTicket(ticket=ticket, queue=label, priority=priority)


def generate(
    n: int, *, seed: int, mix: CorpusMix | None = None, drift: Drift | None = None
) -> list[LabeledTicket]:
    """Generate `n` labeled tickets; the same `n`, `seed`, `mix` and `drift` give the same
    tickets.

    Args:
        n: number of tickets.
        seed: random seed.
        mix: shares of the special kinds of ticket.
        drift: how the tickets differ from the default corpus (`loadgen.corpus_drift`: a new
            product's tickets, an older desk's labels); None: the default corpus.

    Returns:
        The tickets, ids INC0000001.. in order.
    """
    mix = mix or CorpusMix()
    rng = random.Random(seed)  # noqa: S311 - seeded test data, not security
    return [_one(i, rng, mix, drift) for i in range(n)]


def write_jsonl(tickets: list[LabeledTicket], path: Path) -> None:
    """Write one JSON record per line: {"text", "label", "priority", "ticket"}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for item in tickets:
            handle.write(json.dumps(item.to_record(), ensure_ascii=False) + "\n")


def corpus_command(
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of tickets.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    drift: Annotated[
        str | None,
        typer.Option(
            "--drift",
            help="old-desk: cloud tickets filed under servers_storage (an older desk);"
            " new-product: a quarter of the tickets about a product the default corpus never"
            " mentions. Default: neither.",
        ),
    ] = None,
) -> None:
    """Write a seeded, labeled synthetic ticket corpus as JSONL (text, label, priority, ticket)."""
    from collections import Counter

    from rich.console import Console

    from loadgen.corpus_drift import DRIFTS

    if drift is not None and drift not in DRIFTS:
        raise typer.BadParameter(f"--drift must be one of {', '.join(DRIFTS)}")
    tickets = generate(n, seed=seed, drift=DRIFTS[drift] if drift else None)
    write_jsonl(tickets, out)
    counts = Counter(t.queue for t in tickets)
    Console().print(
        f"wrote {len(tickets)} tickets to {out} (seed {seed}); "
        + ", ".join(f"{q} {counts[q]}" for q in QUEUES)
    )
